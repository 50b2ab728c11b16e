#!/usr/bin/env python3
"""A standalone MES client: consume `prediction.made`, act once per decision.

This is the integration contract for a manufacturing execution system, written with nothing from
defectloop: any Kafka client and the JSON Schema in docs/events/prediction.made.schema.json.

- Delivery is at-least-once: the same decision can arrive twice (a redelivery after a crash or a
  rebalance, possibly predicted again by a model switched in meanwhile). Dedupe on `decision_id`,
  which is deterministic (image + role); schema v1 events have none: use `prediction_id`.
- Only `role == "champion"` decides; shadow/challenger predictions are for evaluation.
- `schema_version` tells you which contract a message follows; refuse versions you do not know.
- Commit the offset after you acted (here: after printing), never before.

    python examples/mes_consumer.py --bootstrap 127.0.0.1:9092 [--group mes] [--site A]
        [--max-messages N] [--idle-timeout S]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys

from confluent_kafka import Consumer, KafkaError

TOPIC = "prediction.made"
KNOWN_SCHEMA_VERSIONS = {1, 2}


class SeenPredictions:
    """Decision ids already acted on, persisted so a restart does not act twice."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (prediction_id TEXT PRIMARY KEY)")

    def first_time(self, prediction_id: str) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO seen (prediction_id) VALUES (?)", (prediction_id,)
        )
        self._db.commit()
        return cur.rowcount == 1


def decision_line(p: dict) -> str:
    verdict = "DIVERT" if p["defective"] else "PASS  "
    labels = ",".join(sorted({b["label"] for b in p["boxes"]})) or "-"
    return (
        f"{verdict} site={p['site_id']} camera={p['camera_id']} image={p['image_id']} "
        f"score={p['decision_score']:.2f}/{p['decision_threshold']:.2f} defects={labels} "
        f"model={p['model_name']}:{p['model_version']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--group", default="mes")
    parser.add_argument(
        "--site", default=None, help="only this site's decisions (one MES per site)"
    )
    parser.add_argument("--seen-db", default="mes_seen.sqlite")
    parser.add_argument("--max-messages", type=int, default=0, help="stop after N (0 = forever)")
    parser.add_argument("--idle-timeout", type=float, default=0, help="stop after S idle seconds")
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([TOPIC])
    seen = SeenPredictions(args.seen_db)
    handled = duplicates = 0
    idle = 0.0
    try:
        while not args.max_messages or handled < args.max_messages:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1.0
                if args.idle_timeout and idle >= args.idle_timeout:
                    break
                continue
            idle = 0.0
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"kafka error: {msg.error()}", file=sys.stderr)
                continue
            try:
                prediction = json.loads(msg.value())
                if not isinstance(prediction, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:  # a record no producer of defectloop writes: skip it
                print(
                    f"undecodable record skipped at offset {msg.offset()}: {exc}", file=sys.stderr
                )
                prediction = None
            if prediction is None:
                pass
            elif prediction.get("schema_version") not in KNOWN_SCHEMA_VERSIONS:
                print(
                    f"unknown schema_version, skipped: {prediction.get('schema_version')}",
                    file=sys.stderr,
                )
            elif prediction.get("role", "champion") != "champion":
                pass  # shadow/challenger: not a decision
            elif args.site and prediction.get("site_id") != args.site:
                pass
            elif seen.first_time(prediction.get("decision_id") or prediction["prediction_id"]):
                print(decision_line(prediction), flush=True)
                handled += 1
            else:
                duplicates += 1
            consumer.commit(message=msg, asynchronous=False)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    print(f"decisions={handled} duplicates_ignored={duplicates}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
