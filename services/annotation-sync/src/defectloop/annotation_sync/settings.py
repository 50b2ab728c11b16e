"""Settings of the annotation-sync service (environment prefix ``DEFECTLOOP_ANNOTATION_SYNC_``)."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from defectloop.common.errors import ConfigError
from defectloop.common.settings import ServiceSettings


class LabelStudioInstance(BaseModel):
    """One Label Studio: its base URL and an API token (legacy ``Token`` key)."""

    url: str
    token: str


class AnnotationSyncSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEFECTLOOP_ANNOTATION_SYNC_", extra="ignore", frozen=True
    )

    service_name: str = "annotation-sync"
    port: int = 8083

    tokens_required: bool = Field(
        False,
        description=(
            "Every /v1 request needs an API token (defectloop api-token: a role per site). Off "
            "(the local profile): a request without one may do anything; a token presented is "
            "checked and scopes either way. ON in production."
        ),
    )

    # --- Label Studio ---------------------------------------------------------------------
    label_studio_url: str | None = Field(
        None, description="URL of the shared Label Studio (sites without their own instance)."
    )
    label_studio_token: str | None = Field(
        None, description="API token (legacy `Token` key) of the shared instance."
    )
    label_studio_instances: dict[str, LabelStudioInstance] = Field(
        default_factory=dict,
        description="Strict segregation: site -> its own instance {url, token} (JSON). Sites "
        "not listed use the shared instance.",
    )
    label_studio_timeout_s: float = Field(30.0, gt=0)
    label_studio_retries: int = Field(5, ge=1, description="Attempts per Label Studio call.")
    label_studio_backoff_s: float = Field(0.5, gt=0, description="First retry delay (doubles).")
    sites: list[str] = Field(
        default_factory=list, description="Sites whose projects are ensured and polled at start."
    )
    ignore_other_sites: bool = Field(
        False, description="Handle only the predictions of `sites` (one deployment per site)."
    )

    # --- sampling ------------------------------------------------------------------------
    random_share: float = Field(0.1, ge=0, le=1, description="Share sampled at random.")
    uncertainty_margin: float = Field(
        0.1, ge=0, le=1, description="|decision_score - threshold| <= margin = uncertain."
    )
    sample_uncertain: bool = True
    sample_outliers: bool = True
    overlap_share: float = Field(
        0.1, ge=0, le=1, description="Share of sampled images sent to two annotators."
    )
    daily_budget: int = Field(200, ge=0, description="Images per site per UTC day.")
    targeted_budget_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Most of the daily budget outlier/uncertain samples may use (the rest is "
        "kept for the random stratum, which measures performance).",
    )
    daily_budgets: dict[str, int] = Field(
        default_factory=dict, description="Per-site overrides of daily_budget (JSON)."
    )
    low_agreement_kappa: float = Field(
        0.6, ge=-1, le=1, description="An annotator whose kappa with the others is below this..."
    )
    low_agreement_min_pairs: int = Field(
        20, ge=1, description="...over at least this many overlap images is flagged."
    )
    default_campaign_target: int = Field(
        1000, ge=0, description="Target of a site's campaign until one is set via the API."
    )

    # --- image links and webhooks ----------------------------------------------------------
    signing_secret: str = Field(
        "change-me-in-production",
        min_length=8,
        description="HMAC key for image links and the webhook secret header.",
    )
    link_ttl_s: int = Field(7 * 24 * 3600, gt=0, description="Lifetime of an image link.")
    public_base_url: str | None = Field(
        None,
        description="Base URL of this service as annotators' browsers reach it "
        "(default http://<host>:<port>).",
    )
    webhook_base_url: str | None = Field(
        None, description="Base URL Label Studio posts webhooks to (default public_base_url)."
    )
    poll_interval_s: float = Field(30.0, gt=0, description="Reconciliation poll period.")
    push_batch_size: int = Field(
        50,
        ge=1,
        le=1000,
        description="Most tasks imported into Label Studio in one request (and recorded in one "
        "transaction).",
    )
    push_retry_s: float = Field(
        5.0, gt=0, description="Wait before pushing pending tasks again after Label Studio failed."
    )

    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    def hook_url(self) -> str:
        return (self.webhook_base_url or self.base_url()).rstrip("/") + "/v1/labelstudio/webhook"

    def budget_for(self, site: str) -> int:
        return self.daily_budgets.get(site, self.daily_budget)

    def instance_for(self, site: str) -> LabelStudioInstance:
        """Where ``site``'s project lives: its own instance, else the shared one.

        Only this service's settings say so (``defectloop up`` passes them): annotation-sync
        never reads the CLI's files.
        """
        if site in self.label_studio_instances:
            return self.label_studio_instances[site]
        if self.label_studio_url and self.label_studio_token:
            return LabelStudioInstance(url=self.label_studio_url, token=self.label_studio_token)
        raise ConfigError(
            f"no Label Studio configured for site {site}",
            hint="set DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_URL and _TOKEN (or "
            "_LABEL_STUDIO_INSTANCES); `defectloop up` passes those of its Label Studio",
        )
