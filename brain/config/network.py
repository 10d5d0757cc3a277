"""The network side (edge_agent): Robot API, mDNS discovery, MQTT cloud link, uploader."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from brain.config.base import Strict


class ApiConfig(Strict):
    """The Robot API and companion web app (edge_agent/api)."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # JSON request bodies larger than this are refused with 413 before they are parsed.
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    # Side-loaded update bundles (POST /api/v1/updates/upload) are streamed to disk up to this.
    max_upload_bytes: Annotated[int, Field(ge=1024 * 1024, le=8 * 1024**3)] = 1024**3
    # An upload holds the one upload slot: it is dropped (408) when no bytes arrive for
    # upload_idle_timeout_s, or when the whole body has not arrived in upload_timeout_s.
    upload_idle_timeout_s: Annotated[float, Field(ge=1, le=600)] = 30.0
    upload_timeout_s: Annotated[float, Field(ge=5, le=86400)] = 1800.0
    # Browser origins allowed besides the robot's own (same host and port), e.g. a dev server.
    allowed_origins: list[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]] = Field(
        default_factory=list
    )
    # Host names (besides the robot's own names and addresses, which are always allowed)
    # that clients may put in the Host header, e.g. a name given to the robot in the LAN's DNS.
    allowed_hosts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")]] = (
        Field(default_factory=list)
    )
    pairing_code_ttl_s: Annotated[float, Field(ge=30, le=3600)] = 300.0
    # Wrong codes one client address (an IPv6 /64) may send before it must wait; the wait
    # starts at 2 s and doubles with every further wrong code, up to pairing_lockout_s.
    # It only ever holds back that address, never pairing as a whole.
    pairing_max_failures: Annotated[int, Field(ge=1, le=20)] = 5
    pairing_lockout_s: Annotated[float, Field(ge=10, le=86400)] = 300.0
    # Pairing attempts per client address per minute (429 beyond).
    pairing_rate_per_min: Annotated[int, Field(ge=1, le=600)] = 10
    # Owner tokens stop working this many days after pairing (null: never).
    token_ttl_days: Annotated[float, Field(gt=0, le=3650)] | None = None
    # HTTPS: a PEM certificate and its key (`continuon tls init` makes a self-signed pair).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # WebSocket messages per second per client address; a burst of one second is allowed,
    # excess messages are coalesced (latest wins) and a client that sends more than 4x this
    # within a second is disconnected for 5 s (the teleop watchdog then stops the car).
    ws_max_msgs_per_s: Annotated[float, Field(ge=10, le=1000)] = 200.0
    stream_ticket_ttl_s: Annotated[float, Field(ge=5, le=600)] = 60.0
    camera_max_fps: Annotated[float, Field(gt=0, le=60)] = 15.0
    camera_jpeg_quality: Annotated[int, Field(ge=30, le=100)] = 75
    telemetry_hz: Annotated[float, Field(ge=1, le=50)] = 15.0
    # Connection limits (edge_agent/api/limits.py): an idle socket costs a file descriptor,
    # so the API never holds more than these, whoever asks.
    max_connections: Annotated[int, Field(ge=4, le=4096)] = 64
    max_connections_per_client: Annotated[int, Field(ge=1, le=1024)] = 16
    # A new connection's first request head must arrive within this (idle sockets, slowloris).
    header_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # Idle time between requests on a kept-alive connection before it is closed.
    keepalive_timeout_s: Annotated[float, Field(gt=0, le=600)] = 15.0
    # A JSON request body must arrive within this once its head is in.
    body_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0

    @model_validator(mode="after")
    def _caps_consistent(self) -> ApiConfig:
        if self.max_connections_per_client > self.max_connections:
            raise ValueError(
                f"max_connections_per_client ({self.max_connections_per_client}) cannot exceed "
                f"max_connections ({self.max_connections})"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("api.tls_cert and api.tls_key go together: set both or neither")
        return self


class DiscoveryConfig(Strict):
    """mDNS/DNS-SD advertisement of the Robot API (edge_agent/discovery)."""

    enabled: bool = True
    # How often addresses, port and model version are checked; a change is re-announced.
    poll_s: Annotated[float, Field(ge=0.2, le=300)] = 5.0


class CloudConfig(Strict):
    """The MQTT link to the cloud (edge_agent/cloud); off unless a broker is configured."""

    enabled: bool = False
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    # TLS is on unless switched off explicitly (a test broker on loopback, say).
    tls: bool = True
    ca_file: Path | None = None  # null: the system's CA store
    cert_file: Path | None = None  # client certificate (optional; with key_file)
    key_file: Path | None = None
    username: str | None = None
    # The password lives in its own file (mode 0600), never in this config.
    password_file: Path | None = None
    client_id: str | None = None  # default: continuon-<robot id>
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60
    # MQTT 5 lets the robot tell the broker the largest packet it accepts, so an oversized
    # command is never even received; false: MQTT 3.1.1 for brokers without MQTT 5 (then
    # oversized payloads are read, and dropped by size before any parsing).
    mqtt5: bool = True
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./-]{1,64}$")] = "continuon"
    telemetry_period_s: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    # How often the brain's status is checked for events (mode, e-stop, update, task errors).
    status_poll_s: Annotated[float, Field(ge=0.05, le=60)] = 0.5
    queue_dir: Path | None = None  # default: <state_dir>/cloud-queue
    queue_max_bytes: Annotated[int, Field(ge=4096, le=1 << 30)] = 4 << 20
    backoff_initial_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0

    @model_validator(mode="after")
    def _consistent(self) -> CloudConfig:
        if self.enabled and not self.host:
            raise ValueError("cloud.enabled needs cloud.host (the MQTT broker)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cloud.cert_file and cloud.key_file go together (client certificate)")
        if self.password_file is not None and not self.username:
            raise ValueError("cloud.password_file needs cloud.username")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("cloud.backoff_initial_s must not exceed cloud.backoff_max_s")
        return self


class UploaderConfig(Strict):
    """Where exported episodes and candidate adapters are uploaded (edge_agent/uploader)."""

    destination: str | None = None
    chunk_bytes: Annotated[int, Field(ge=4096, le=1 << 30)] = 4 << 20
    retries: Annotated[int, Field(ge=0, le=100)] = 5
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Bearer token for an HTTP destination, read from this file (never inline).
    token_file: Path | None = None
    ca_file: Path | None = None  # for an https:// destination with a private CA

    @field_validator("destination")
    @classmethod
    def _destination(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith(("http://", "https://")):
            raise ValueError(f"destination {v!r}: use an http(s):// URL or a directory path")
        return v
