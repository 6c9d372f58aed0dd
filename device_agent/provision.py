"""Provision a device home directory with a verified bundle committed in slot A.

Used by ``edgetool flash`` on the engineer's host and by the fleet's tools that make device homes;
it lives on the device side so they all share one definition of the home layout.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from device_agent.bundle import PublicKey, TrustStore, verify_bundle
from device_agent.bundle.trust import TRUST_NAME, verify_initial
from device_agent.config import (
    AgentConfig,
    ApiSection,
    BrokerSection,
    DeviceSection,
    DownloadSection,
    ReplaySection,
    TelemetrySection,
    TrustSection,
)
from device_agent.errors import ConfigError, TrustError
from device_agent.floor import RollbackFloor
from device_agent.fsutil import atomic_write
from device_agent.home import DeviceState, Home
from device_agent.mqtt import BrokerURL, parse_brokers


@dataclass
class FlashOptions:
    device_id: str
    broker: str
    trust: list[Path]
    fleet: str = "default"
    sku: str = "generic"
    tags: tuple[str, ...] = ()
    threshold: int = 1
    username: str = ""
    password: str = ""
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    telemetry_interval_s: float = 10.0
    replay_rate: float = 0.0
    api_listen: str = "unix"
    model_names: tuple[str, ...] = ()  # bundle names the device accepts; () = the flashed bundle's name
    fleet_urls: tuple[str, ...] = ()  # artifact URL prefixes; () = http(s) on the broker's host(s)
    force: bool = False
    trust_metadata: Path | None = None  # trust.json: replaces ``trust`` and ``threshold``
    extra: dict[str, Any] = field(default_factory=dict)  # section name -> section dataclass


def flash(bundle_path: Path, target: Path, opts: FlashOptions) -> Home:
    """Write the device home of DESIGN.md into ``target``.

    Raises:
        ConfigError: bad options, or ``target`` already holds a device (without ``force``).
        BundleError: the bundle does not verify against the given trust keys (or trust metadata).
    """
    parse_brokers(opts.broker)
    keys, trust, metadata = _trust(opts)
    try:
        data = bundle_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {bundle_path}: {exc.strerror}") from None
    manifest = verify_bundle(data, trust, now=time.time()).manifest
    home = Home(target)
    if home.state_file.exists() and not opts.force:
        raise ConfigError(f"{target} already holds a device home; pass --force to overwrite it")
    if opts.force:
        for sub in ("slots", "downloads", "spool", "run", "trust", "tls"):
            shutil.rmtree(target / sub, ignore_errors=True)
    home.create_dirs()
    for key in keys:
        atomic_write(home.trust / f"{key.keyid}.pub", key.to_pem())
    if metadata is not None:
        atomic_write(home.trust / TRUST_NAME, metadata)
    config = _agent_config(opts, home, manifest.name)
    secret = bool(opts.password or opts.keyfile)
    atomic_write(home.config, config.to_toml().encode(), mode=0o600 if secret else 0o644)
    atomic_write(home.slot("a"), data)
    home.floor_file.unlink(missing_ok=True)  # a new device: the floor starts at the flashed bundle
    RollbackFloor(home.floor_file).raise_to({manifest.name: manifest.sequence})
    home.save_state(DeviceState(active="a", committed={manifest.name: manifest.sequence}))
    return home


def _agent_config(opts: FlashOptions, home: Home, model_name: str) -> AgentConfig:
    """agent.toml's settings from the options (TLS files copied into the home)."""
    cafile, certfile, keyfile = (_copy_tls(home, p) for p in (opts.cafile, opts.certfile, opts.keyfile))
    config = AgentConfig(
        device=DeviceSection(
            id=opts.device_id,
            fleet=opts.fleet,
            sku=opts.sku,
            tags=opts.tags,
            models=opts.model_names or (model_name,),
        ),
        broker=BrokerSection(
            url=opts.broker,
            username=opts.username,
            password=opts.password,
            cafile=cafile,
            certfile=certfile,
            keyfile=keyfile,
        ),
        trust=TrustSection(threshold=opts.threshold),
        telemetry=TelemetrySection(interval_s=opts.telemetry_interval_s),
        api=ApiSection(listen=opts.api_listen),
        download=DownloadSection(allowed_urls=opts.fleet_urls or broker_hosts_urls(opts.broker)),
        replay=ReplaySection(rate=opts.replay_rate),
    )
    for section, values in opts.extra.items():  # e.g. {"probation": ProbationSection(...)}
        config = replace(config, **{section: values})
    return config


def broker_hosts_urls(broker: str) -> tuple[str, ...]:
    """Artifact URL prefixes when no ``--fleet-url`` is given: http and https on each broker URL's host."""
    hosts = dict.fromkeys(BrokerURL.parse(url.strip()).host for url in broker.split(",") if url.strip())
    return tuple(f"{scheme}://{_url_host(h)}/" for h in hosts for scheme in ("http", "https"))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _trust(opts: FlashOptions) -> tuple[list[PublicKey], TrustStore, bytes | None]:
    """The plain keys to copy, the store to verify the bundle with, and the trust.json bytes to write."""
    if opts.trust_metadata is None:
        if not opts.trust:
            raise ConfigError("give the release keys (--trust) or trust metadata (--trust-metadata)")
        return [PublicKey.load(p) for p in opts.trust], TrustStore.from_paths(opts.trust, opts.threshold), None
    if opts.trust:
        raise ConfigError("--trust and --trust-metadata exclude each other: the metadata names the release keys")
    try:
        meta = verify_initial(opts.trust_metadata.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {opts.trust_metadata}: {exc.strerror}") from None
    except TrustError as exc:
        raise ConfigError(f"{opts.trust_metadata}: {exc} [{exc.code}]") from None
    return [], meta.release_store(), meta.to_bytes()


def _copy_tls(home: Home, path: Path | None) -> str:
    if path is None:
        return ""
    dest = home.root / "tls" / path.name
    try:
        atomic_write(dest, path.read_bytes(), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return str(dest.resolve())
