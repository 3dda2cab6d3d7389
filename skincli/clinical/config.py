"""The clinical configuration: which PACS a job may read from, where results go, how to log in.

One YAML file (`--clinical-config` / $SKIN_CLINICAL_CONFIG), see docs/clinical.md:

    sources:                 # DICOMweb servers a job may name (never a URL from the caller)
      pacs:
        url: http://127.0.0.1:8042/dicom-web
        auth: {type: basic, username: skin, password_env: PACS_PASSWORD}
        allow_loopback: true
    destinations:
      ehr:
        type: fhir
        url: http://127.0.0.1:8080/fhir
        auth: {type: smart, token_url: ..., client_id: ..., private_key: ..., kid: ...}
    receive: {ae_title: SKINCLI, host: 127.0.0.1, port: 11112, results_to: pacs}
    results:
      sr: true               # store a DICOM SR into the source study by STOW-RS
      fhir: ehr              # POST the FHIR transaction Bundle here
    jobs_dir: runs/jobs

Secrets come from the environment (`*_env`) or a file (`private_key`), never from this file,
and never appear in a message. Unknown keys are refused with a did-you-mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skincli.clinical.outbound import BasicAuth, BearerAuth, Endpoint, Retry
from skincli.errors import SkinError, did_you_mean

CONFIG_ENV = "SKIN_CLINICAL_CONFIG"
_TOP = {"sources", "destinations", "results", "jobs_dir", "device", "receive"}
_RECEIVE = {"ae_title", "host", "port", "results_to"}
_ENDPOINT = {"url", "type", "auth", "allow_loopback", "allow_private", "timeout_s", "retry"}
_RETRY = {"attempts", "base_s", "cap_s", "deadline_s"}
_AUTH = {"none": set(), "basic": {"username", "password_env"}, "bearer": {"token_env"},
         "smart": {"token_url", "client_id", "private_key", "kid", "scope", "alg"}}
_RESULTS = {"sr", "heatmap", "fhir"}
_DEVICE = {"manufacturer", "model_name", "device_uid", "institution"}
_TYPES = ("dicomweb", "fhir")


@dataclass
class ClinicalConfig:
    """Sources and destinations by name, what to do with results, where jobs are kept."""

    sources: dict[str, Endpoint] = field(default_factory=dict)
    destinations: dict[str, Endpoint] = field(default_factory=dict)
    store_sr: bool = False
    heatmap: bool = False  # with the SR, a Secondary Capture heat map (not for diagnosis)
    fhir: str | None = None
    jobs_dir: Path = Path("runs/jobs")
    device: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    # DIMSE C-STORE receiver (`skin receive`): where it listens, where the SR of a pushed
    # image is stored (a source name; None = nowhere).
    receive_ae_title: str = "SKINCLI"
    receive_host: str = "127.0.0.1"
    receive_port: int = 11112
    receive_results_to: str | None = None

    def source(self, name: str) -> Endpoint:
        """A configured DICOMweb source by name (one line with did-you-mean otherwise)."""
        if name not in self.sources:
            raise SkinError(f"Unknown source {name!r}" + (did_you_mean(name, self.sources)
                                                          or ""),
                            hint=f"Configured sources: {', '.join(sorted(self.sources)) or '-'}")
        return self.sources[name]


def _keys(where: str, given: dict[str, Any], allowed: set[str]) -> None:
    for key in given:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed).strip()
            raise SkinError(f"Unknown key {where}.{key} in the clinical configuration"
                            + (f". {hint}" if hint else ""),
                            hint=f"Allowed: {', '.join(sorted(allowed))}")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SkinError(f"{where} in the clinical configuration must be a mapping",
                        hint="See docs/clinical.md")
    return value


def _secret_env(where: str, var: Any) -> str:
    value = os.environ.get(str(var or ""))
    if not var or not value:
        raise SkinError(f"{where}: the environment variable {var!r} is not set",
                        hint="Secrets come from the environment, never the configuration file")
    return value


def _auth(where: str, raw: Any, base: Path) -> Any:
    raw = _mapping(where, raw)
    kind = str(raw.get("type", "none"))
    if kind not in _AUTH:
        raise SkinError(f"{where}.type {kind!r} is not an auth type"
                        + did_you_mean(kind, _AUTH), hint=f"One of: {', '.join(_AUTH)}")
    _keys(where, {k: v for k, v in raw.items() if k != "type"}, _AUTH[kind])
    if kind == "basic":
        return BasicAuth(str(raw.get("username", "")),
                         _secret_env(where + ".password_env", raw.get("password_env")))
    if kind == "bearer":
        return BearerAuth(_secret_env(where + ".token_env", raw.get("token_env")))
    if kind == "smart":
        from skincli.clinical.smart import SmartBackendAuth

        missing = [k for k in ("token_url", "client_id", "private_key", "kid") if not raw.get(k)]
        if missing:
            raise SkinError(f"{where}: missing {', '.join(missing)}", hint="See docs/clinical.md")
        key = Path(str(raw["private_key"]))
        return SmartBackendAuth(token_url=str(raw["token_url"]),
                                client_id=str(raw["client_id"]),
                                key_path=key if key.is_absolute() else base / key,
                                kid=str(raw["kid"]), scope=str(raw.get("scope", "system/*.write")),
                                alg=str(raw.get("alg", "RS384")))
    return None


def _endpoint(where: str, name: str, raw: Any, base: Path, kind: str | None) -> Endpoint:
    raw = _mapping(where, raw)
    _keys(where, raw, _ENDPOINT)
    if not raw.get("url"):
        raise SkinError(f"{where}.url is missing", hint="See docs/clinical.md")
    etype = str(raw.get("type", kind or "dicomweb"))
    if etype not in _TYPES:
        raise SkinError(f"{where}.type {etype!r} is not one of {', '.join(_TYPES)}"
                        + did_you_mean(etype, _TYPES))
    retry_raw = _mapping(where + ".retry", raw.get("retry"))
    _keys(where + ".retry", retry_raw, _RETRY)
    ep = Endpoint(name, str(raw["url"]), allow_loopback=bool(raw.get("allow_loopback", False)),
                  allow_private=bool(raw.get("allow_private", True)),
                  timeout_s=float(raw.get("timeout_s", 30.0)),
                  retry=Retry(**{k: type(getattr(Retry(), k))(v) for k, v in retry_raw.items()}),
                  kind=etype)
    ep.auth = _auth(where + ".auth", raw.get("auth"), base)
    if hasattr(ep.auth, "allow_loopback"):  # the token endpoint: the same address rules
        ep.auth.allow_loopback, ep.auth.allow_private = ep.allow_loopback, ep.allow_private
    return ep


def parse(raw: Any, base: Path = Path(".")) -> ClinicalConfig:
    """A ClinicalConfig from the parsed YAML (one-line SkinError on any problem)."""
    raw = _mapping("the top level", raw)
    _keys("(top)", raw, _TOP)
    cfg = ClinicalConfig()
    for name, ep in _mapping("sources", raw.get("sources")).items():
        cfg.sources[str(name)] = _endpoint(f"sources.{name}", str(name), ep, base, "dicomweb")
    for name, ep in _mapping("destinations", raw.get("destinations")).items():
        cfg.destinations[str(name)] = _endpoint(f"destinations.{name}", str(name), ep, base,
                                                None)
    results = _mapping("results", raw.get("results"))
    _keys("results", results, _RESULTS)
    cfg.store_sr = bool(results.get("sr", False))
    cfg.heatmap = bool(results.get("heatmap", False))
    if cfg.heatmap and not cfg.store_sr:
        raise SkinError("results.heatmap needs results.sr: true",
                        hint="The heat map is stored beside the SR")
    if results.get("fhir"):
        cfg.fhir = str(results["fhir"])
        if cfg.fhir not in cfg.destinations or cfg.destinations[cfg.fhir].kind != "fhir":
            raise SkinError(f"results.fhir names {cfg.fhir!r}, which is not a fhir destination"
                            + did_you_mean(cfg.fhir, cfg.destinations))
    receive = _mapping("receive", raw.get("receive"))
    _keys("receive", receive, _RECEIVE)
    cfg.receive_ae_title = str(receive.get("ae_title", cfg.receive_ae_title))[:16]
    cfg.receive_host = str(receive.get("host", cfg.receive_host))
    cfg.receive_port = int(receive.get("port", cfg.receive_port))
    if receive.get("results_to"):
        cfg.receive_results_to = str(receive["results_to"])
        cfg.source(cfg.receive_results_to)  # an unknown name: one line, did-you-mean
    device = _mapping("device", raw.get("device"))
    _keys("device", device, _DEVICE)
    cfg.device = {k: str(v) for k, v in device.items()}
    jobs = Path(str(raw.get("jobs_dir", "runs/jobs")))
    cfg.jobs_dir = jobs if jobs.is_absolute() else base / jobs
    return cfg


def load(path: str | os.PathLike[str] | None = None) -> ClinicalConfig:
    """Read the configuration file (argument, else $SKIN_CLINICAL_CONFIG)."""
    value = path if path is not None else os.environ.get(CONFIG_ENV)
    if not value:
        raise SkinError("No clinical configuration", hint=f"Pass --clinical-config FILE or set "
                        f"${CONFIG_ENV} (see docs/clinical.md)")
    p = Path(value)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SkinError(f"Cannot read the clinical configuration {p}: {exc.strerror or exc}",
                        hint="Check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise SkinError(f"{p} is not valid YAML{at}", hint="Fix the file") from None
    cfg = parse(raw, p.parent)
    cfg.path = p
    return cfg
