-- One schema per service in one PostgreSQL database (brief §4); Label Studio and MLflow get their own databases.
CREATE SCHEMA IF NOT EXISTS ingest;
CREATE SCHEMA IF NOT EXISTS inference;
CREATE SCHEMA IF NOT EXISTS annotation_sync;
CREATE SCHEMA IF NOT EXISTS monitor;
CREATE SCHEMA IF NOT EXISTS trainer;
CREATE DATABASE labelstudio;
CREATE DATABASE mlflow;
