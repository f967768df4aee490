"""Settings from flags, ATE_* environment variables or a YAML/JSON config file, same names.

Precedence: command-line flag > environment > config file > default. A flag `--deadline-ms`,
the variable `ATE_DEADLINE_MS` and the config key `deadline_ms` are the same setting.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from askexpert.protocol import DEFAULT_PREFIX


@dataclass(frozen=True)
class BrokerUrl:
    """One broker of the `broker` list: host, port and whether it speaks TLS."""

    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, text: str) -> "BrokerUrl":
        url = text.strip()
        u = urlparse(url)
        try:
            port_ok = u.port is None or 0 < u.port < 65536
        except ValueError:  # a port that is not a number
            port_ok = False
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname or not port_ok or u.path not in ("", "/"):
            raise ValueError(f"must look like mqtt://host:port or mqtts://host:port, comma-separated for several (not {url!r})")
        tls = u.scheme in ("mqtts", "ssl")
        return cls(url, u.hostname, u.port or (8883 if tls else 1883), tls)


class CommonSettings(BaseSettings):
    """What every component needs: the broker, the topic prefix, logging and the ops port."""

    model_config = SettingsConfigDict(env_prefix="ATE_", extra="forbid")

    broker: str = Field(
        "mqtt://127.0.0.1:1883",
        description="mqtt://host:port or mqtts://host:port (TLS); several, comma-separated: the first that answers, "
        "the next on loss (a cluster's nodes, or independent brokers)",
    )
    broker_failback_s: float = Field(
        60.0,
        ge=0,
        description="with several brokers: after a failover, move back to the first once it has answered this long; 0 = stay where it works",
    )
    prefix: str = Field(DEFAULT_PREFIX, description="topic prefix")
    username: str | None = Field(None, description="broker user name")
    password: str | None = Field(None, description="broker password")
    tls_ca: Path | None = Field(None, description="CA bundle for mqtts:// (system CAs when unset)")
    tls_cert: Path | None = Field(None, description="client certificate for mutual TLS")
    tls_key: Path | None = Field(None, description="client key for mutual TLS")
    pack: Path = Field(Path("packs/fashion-mnist"), description="model pack folder")
    backend: str = Field("auto", description="auto (onnx on cpu: lowest latency there; torch on cuda) | torch | onnx | tensorrt")
    device: str = Field("cpu", description="cpu | cuda (torch backend; fp16 on cuda)")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto",
        description="auto (torch: fp16 on cuda, fp32 on cpu; onnx: fp32), fp32, bf16 (torch, cpu with native bf16, else fp32), "
        "fp16 (torch, cuda), int8 (onnx: dynamic quantization)",
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU inference threads (torch, onnx); 0 = auto, half the usable cores (at least 1): "
        "an edge and a hub on one box each get their half",
    )
    log_level: str = Field("info", description="debug | info | warning | error")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics and /healthz port; 0 = off")
    stats_interval_s: float = Field(10.0, ge=0, description="period of the stats message on MQTT; 0 = off")

    @field_validator("broker", mode="before")
    @classmethod
    def _broker_list(cls, v: object) -> object:
        """A YAML list of URLs is the same setting as the comma-separated string."""
        return ",".join(str(u) for u in v) if isinstance(v, (list, tuple)) else v

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        urls = [BrokerUrl.parse(u) for u in v.split(",")]
        if len({u.tls for u in urls}) > 1:
            raise ValueError("the brokers in one list must all be mqtt:// or all be mqtts:// (one TLS setup per client)")
        return ",".join(u.url for u in urls)

    @property
    def brokers(self) -> list["BrokerUrl"]:
        """The broker list, in the order a client tries it."""
        return [BrokerUrl.parse(u) for u in self.broker.split(",")]

    @property
    def broker_tls(self) -> bool:
        return self.brokers[0].tls

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("ATE_CONFIG")
        if config:
            if not Path(config).is_file():
                raise FileNotFoundError(f"config file {config} (ATE_CONFIG / --config) does not exist")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config))  # YAML is a JSON superset
        return tuple(sources)


S = TypeVar("S", bound=CommonSettings)


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[CommonSettings]) -> None:
    """One flag per settings field (`--deadline-ms` for deadline_ms); unset flags stay unset."""
    parser.add_argument("--config", help="YAML or JSON config file (same names as the flags)")
    for name, info in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = info.annotation
        is_bool = kind is bool or (get_origin(kind) is not None and bool in get_args(kind))
        help_text = f"{info.description or name} (env ATE_{name.upper()}; default {info.default!r})"
        if is_bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def settings_from_args(cls: type[S], args: argparse.Namespace) -> S:
    if getattr(args, "config", None):
        os.environ["ATE_CONFIG"] = args.config
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k in cls.model_fields and v is not None}
    return cls(**given)
