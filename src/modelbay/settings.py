"""Typed settings: the server's, and each served model's (`ModelConfig`, also the schema of `modelbay.yaml`).

Sources, highest precedence first: CLI flags, a YAML file (`--config`), `MODELBAY_*` environment
variables, the defaults below. A model's settings have no environment variables; below what the user
passed (flags, `--config`) sits the model folder's own `modelbay.yaml`, then the defaults:

    server settings:  flag > --config file > MODELBAY_* variable > default
    model settings:   flag > --config `models:` entry > the folder's modelbay.yaml > default

Every source is a plain dict until `Settings.load` merges them and msgspec converts the result, so a
misspelt key or a wrong type is one clear error naming the field, and a value that equals its
default still counts as set (a converted struct no longer knows which values were given:
`omit_defaults` drops them, so nothing is merged after conversion). Nothing here reads the
environment at import.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from modelbay.errors import ModelLoadError

MANIFEST_NAME = "modelbay.yaml"
_T = TypeVar("_T")
log = logging.getLogger("modelbay.settings")


class _Config(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    pass


class _FrozenConfig(
    msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True
):
    """Settings that are swapped whole at runtime, never changed in place (a traffic policy)."""


class BatchingConfig(_Config):
    """Dynamic batching for one model (the terms and defaults follow Triton's dynamic batcher).

    max_batch_size:     most rows (summed first dimensions) merged into one forward pass; 1 disables
                        batching. A request with more rows than this is refused with 400.
    max_queue_delay_ms: longest a request waits, in milliseconds, for others to fill its batch.
                        0 batches only what is already queued (batches still form under load,
                        while the model is busy).
    max_queue_size:     most requests waiting; one more is refused at once with 503 (Overloaded).
    slo_ms:             a latency objective in milliseconds: the batch size (up to max_batch_size)
                        and the queue delay are then tuned online to meet it (runtime/adaptive.py,
                        Clipper's AIMD); None keeps them fixed.
    default_output:     with slo_ms: the model's output for one row, as JSON (a nested list for a
                        one-output model, else {output name: nested list}; for a custom predictor,
                        whatever its postprocess takes). A request that would miss the SLO gets it,
                        flagged, instead of a late answer (as Clipper's default_output). None:
                        every request is answered by the model, late or not.
    """

    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    max_queue_size: int = 256
    slo_ms: float | None = None
    default_output: Any = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.max_queue_delay_ms < 0:
            raise msgspec.ValidationError(
                "batching: max_batch_size and max_queue_size must be >= 1, max_queue_delay_ms >= 0"
            )
        if self.slo_ms is not None and self.slo_ms <= 0:
            raise msgspec.ValidationError("batching: slo_ms must be > 0")
        if self.default_output is not None and self.slo_ms is None:
            raise msgspec.ValidationError(
                "batching: default_output needs slo_ms (it answers requests that would miss the SLO)"
            )


class CacheConfig(_Config):
    """Prediction cache for one model (`modelbay.runtime.cache`).

    max_entries: most answers kept (least recently used leave first).
    ttl_s:       seconds an answer stays valid; None keeps it until evicted.
    """

    max_entries: int = 1024
    ttl_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_entries < 1 or (self.ttl_s is not None and self.ttl_s <= 0):
            raise msgspec.ValidationError("cache: max_entries must be >= 1 and ttl_s > 0")


class ImageConfig(_Config):
    """Image preprocessing for `task: image-classification`, the torchvision recipe without torchvision.

    mode:       Pillow mode the image is converted to: "RGB" (3 channels) or "L" (1 channel).
    resize:     the shorter side is resized to this many pixels (bilinear, antialiased); None keeps it.
    crop:       a centered square of this many pixels is cut out; None keeps the whole image.
    mean, std:  per-channel normalization applied after scaling pixels to [0, 1]; None skips it.
    max_pixels: images with more pixels than this are refused before decoding (decompression bombs);
                the default, 4096 x 4096, admits a 12-16 MP photo and bounds one decode to ~50 MB
                (RGB), with at most `preprocess_threads` decodes at once per model.
    """

    mode: str = "RGB"
    resize: int | None = None
    crop: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    max_pixels: int = 4096 * 4096


class TensorConfig(_Config):
    """A model input or output as the manifest declares it; shape includes the batch dim (-1: any)."""

    name: str
    datatype: str = "FP32"
    shape: list[int] | None = None


class StickyConfig(_FrozenConfig, frozen=True):
    """Sticky assignment of a traffic split (A/B): callers with the same value of `header` (an HTTP
    request header, any case, or a gRPC metadata key) always get the same version."""

    header: str

    def __post_init__(self) -> None:
        if not self.header.strip():
            raise msgspec.ValidationError("traffic: sticky.header must name a request header")


class ShadowConfig(_FrozenConfig, frozen=True):
    """Shadow traffic: `percent` of a model's unversioned calls also go to `version` in the
    background; its answers are compared with the served ones and recorded, never returned.

    tolerance: outputs agree when every element is within `tolerance` of the served one, absolute
               or relative (numpy.allclose's atol = rtol = tolerance); predictions agree when
               their JSON is equal.
    """

    version: str
    percent: float = 100.0
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if not self.version:
            raise msgspec.ValidationError("traffic: shadow.version must name a model version")
        if not 0 <= self.percent <= 100 or not self.tolerance >= 0:
            raise msgspec.ValidationError(
                "traffic: shadow.percent must be in [0, 100] and shadow.tolerance >= 0"
            )


class TrafficConfig(_FrozenConfig, frozen=True):
    """Which versions of a model answer the calls that name no version (registry/traffic.py).

    split:  weight per version, e.g. {"2": 90, "3": 10} (canary): each call goes to a version with
            probability weight / sum of the weights of the versions loaded; weights >= 0, summing
            to > 0. None: the default version answers.
    sticky: with a split, assign by the hash of a request header instead of at random (A/B).
    shadow: also send a share of the calls to another version, in the background.
    A call that names its version always gets that version.
    """

    split: dict[str, float] | None = None
    sticky: StickyConfig | None = None
    shadow: ShadowConfig | None = None

    def __post_init__(self) -> None:
        if self.split is not None:
            weights = list(self.split.values())
            if not all(0 <= weight < math.inf for weight in weights) or not sum(weights) > 0:
                raise msgspec.ValidationError(
                    f"traffic: split weights must be >= 0 and sum to > 0, got {self.split}"
                )
            if not all(self.split):
                raise msgspec.ValidationError("traffic: split names an empty version")
        if self.sticky is not None and self.split is None:
            raise msgspec.ValidationError("traffic: sticky needs a split to keep callers on")


# A host name of url_inputs.allow_hosts: DNS labels, the first of them perhaps "*" (any names below).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


class UrlInputConfig(_Config):
    """Inputs by URL for one model's simple door (`POST /predict/{model}?url=...`), off unless set:
    the server fetches the URL and takes its bytes as the example (modelbay.runtime.fetch).

    allow_hosts:   the hosts a URL may name, on its first request and on every redirect: exact
                   names ("images.example.com", or an IP address as the URL writes it) or
                   "*.example.com" (any name ending in ".example.com", not example.com itself);
                   ASCII (an internationalized name in its xn-- form), compared without case.
                   Whatever it lists, nothing is fetched from a loopback, private, link-local
                   (the cloud metadata address 169.254.169.254 included), CGNAT, multicast,
                   reserved or unspecified address: every address a name resolves to is checked
                   on every connection, and the connection goes to the address checked.
    max_bytes:     largest body fetched, in bytes (default 10 MiB); past it the fetch stops: 413.
    timeout_s:     longest one URL's fetch may take, in seconds, from its first connection to its
                   last byte, redirects included; past it 504. The request's deadline (the
                   model's timeout_s) bounds it too.
    max_redirects: redirects followed per URL; one more is refused with 400.
    max_urls:      most URLs in one request (each may bring max_bytes).
    allow_http:    also fetch http:// URLs (no TLS: anyone on the path can change the bytes);
                   false (default): https only.
    """

    allow_hosts: list[str]
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3
    max_urls: int = 8
    allow_http: bool = False

    def __post_init__(self) -> None:
        self.allow_hosts = [host.lower() for host in self.allow_hosts]
        bad = [host for host in self.allow_hosts if not _allowed_host(host)]
        if not self.allow_hosts or bad:
            raise msgspec.ValidationError(
                "url_inputs: allow_hosts must list host names (images.example.com, *.example.com) "
                f"or IP addresses, got {bad or 'none'}"
            )
        if self.max_bytes < 1 or not self.timeout_s > 0 or self.max_redirects < 0 or self.max_urls < 1:
            raise msgspec.ValidationError(
                "url_inputs: max_bytes and max_urls must be >= 1, timeout_s > 0, max_redirects >= 0"
            )


def _allowed_host(host: str) -> bool:
    """True for an entry of url_inputs.allow_hosts: a host name, "*." and a name, or an IP address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_NAME.fullmatch(host) is not None
    return True


class ModelConfig(_Config):
    """How to load and serve one model: the CLI flags, a `models:` entry in YAML, or `modelbay.yaml`.

    A ModelConfig is complete: `Settings.load` (and `load_model` given a dict) merge a model folder's
    modelbay.yaml under the entry before converting, and a ModelConfig is never merged again.

    path:        model file or model folder (relative paths in a manifest are relative to its folder).
    name:        name in URLs; defaults to the file's stem or the folder's name.
    version:     model version, a string as in OIP; default "1".
    format:      force a format instead of detecting it (see `modelbay.loading.detect.Format`).
    weights:     in a model folder, the file that holds the model or its weights.
    arch:        `package.module:Class` (or `file.py:Class` in the folder) building the network
                 for a state_dict; `arch_kwargs` are passed to it.
    trust_pickle: allow unpickling a full `torch.save(model)` file, which can run arbitrary code.
    task:        "tensor" (tensors in, tensors out) or "image-classification".
    inputs, outputs: tensor specs; found from the artifact where it says (torch.export, ONNX).
    labels:      class names, inline or a file with one per line (image-classification).
    top_k:       how many labels an image-classification answer lists.
    softmax:     image-classification: the first output holds logits, so scores are their softmax;
                 false when the model already returns probabilities.
    cache:       cache answers to repeated requests ({max_entries, ttl_s}); None (default) caches nothing.
    timeout_s:   longest a request to this model may take, in seconds, from arrival to answer
                 (preprocess, queue, forward pass, postprocess); past it the caller gets 504 /
                 DEADLINE_EXCEEDED and a request still queued is dropped. None: no limit.
    preprocess_threads: threads of this model's own pool for its per-request hooks (preprocess,
                 postprocess, tensor decoding); a hook that hangs can block only this pool.
    worker_process: run the model in a model worker process of its own (a crash or a hang kills
                 only that process, which is restarted); always so for a model folder with a
                 requirements.txt, which runs in its own Python environment.
    traffic:     the model's traffic policy (TrafficConfig: split, sticky, shadow) for the calls
                 that name no version; the management API changes it at runtime. None: they go
                 to the default version.
    url_inputs:  let the simple door's examples be URLs the server fetches (UrlInputConfig:
                 allow_hosts, max_bytes, timeout_s, ...); a policy is set whole by one source,
                 never merged key by key. None (default): an example given by URL gets 400.
    torch_compile: run a PyTorch model's module through `torch.compile` (TorchInductor) when it
                 loads; compiling takes seconds to minutes at load and needs a C++ compiler.
                 `modelbay export --pick` sets it when that is the fastest backend measured.
    offer_onnx:  let callers allowed to infer the model download its ONNX file (`GET
                 /v2/models/{m}/onnx`, for a client's local copy: modelbay.client.local). Off by
                 default: a model's weights leave the server only when its owner says so.
    """

    path: str | None = None
    name: str | None = None
    version: str = "1"
    format: str | None = None
    weights: str | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    trust_pickle: bool = False
    task: str = "tensor"
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    labels: list[str] | str | None = None
    top_k: int = 5
    softmax: bool = True
    image: ImageConfig = msgspec.field(default_factory=ImageConfig)
    batching: BatchingConfig = msgspec.field(default_factory=BatchingConfig)
    cache: CacheConfig | None = None
    timeout_s: float | None = 60.0
    preprocess_threads: int = 2
    worker_process: bool = False
    traffic: TrafficConfig | None = None
    url_inputs: UrlInputConfig | None = None
    torch_compile: bool = False
    offer_onnx: bool = False

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise msgspec.ValidationError("timeout_s must be > 0 (or null for no limit)")
        if self.preprocess_threads < 1:
            raise msgspec.ValidationError("preprocess_threads must be >= 1")


_GROUPS = ("image", "batching", "cache")  # ModelConfig fields that are structs of settings
CONTROL_MODES = ("explicit", "poll", "none")  # Triton's model control modes


class Settings(_Config):
    """Server settings.

    host, port:     where the HTTP server listens (port 0: any free port).
    grpc_port:      where the OIP gRPC server listens, on the same host; 0 disables gRPC.
    workers:        server processes, each with its own copy of every model, sharing the ports;
                    use up to one per core (each gets cores / workers torch threads).
    max_body_bytes: largest request body (HTTP) or message (gRPC) accepted, in bytes; larger
                    ones get 413 / INVALID_ARGUMENT.
    graceful_timeout_s: on SIGTERM / SIGINT, how long in-flight requests (HTTP and gRPC) may still
                    take, in seconds; those not done by then are answered 503 / UNAVAILABLE and
                    the process exits.
    read_timeout_s: a request's headers must arrive within this many seconds of its first byte
                    (or of the connection opening), and its body within this many seconds of the
                    first read; else 408 and the connection is closed (slow-client attacks).
    max_connections: most HTTP connections and requests in progress at once; past it a request
                    is answered 503 at once instead of waiting.
    log_level:      "debug", "info", "warning" or "error".
    log_format:     "text" (a line of text per log line) or "json" (a JSON object per line), for
                    every log line of the server (modelbay.logs).
    access_log:     an access log line per request (modelbay.logs: request id, model, version,
                    status, latency, batch size, caller), at INFO. Off by default: a line per
                    request through Python's logging halves a small model's requests/s
                    (benchmarks/results/access_log_cost.json).
    tracing:        OpenTelemetry traces of every request, exported as the OTEL_* environment
                    variables say (modelbay.runtime.tracing; needs `modelbay[tracing]`).
    model_repository: a model repository folder (models/<name>/<version>/...) served live: models
                    are found there again on each load, on each poll, and uploads are written there.
    model_control_mode: Triton's terms. "explicit" (modelbay's default): the repository API loads
                    and unloads models; every model is loaded at start unless `load_models` names
                    some. "poll": as explicit, and the repository is rescanned every
                    `repository_poll_s` seconds, loading new and changed versions and unloading
                    removed ones. "none": the models of the start are served as they are; the
                    repository API only lists them.
    load_models:    explicit mode: the model names of `model_repository` loaded at start (Triton's
                    --load-model); empty: all of them.
    repository_poll_s: poll mode: seconds between two rescans of `model_repository`.
    max_upload_bytes: largest body of a model repository load request (a model uploaded with its
                    files), in bytes.
    auth:           an API key file (`modelbay keys create`, modelbay.auth.keys): every request
                    then needs a key of that file (401 without, 403 with one of the wrong scope or
                    model, 429 over its rate limit), from any address; the file is read again
                    when it changes. None: no keys (everything open, the model repository API
                    to loopback clients only).
    auth_health:    with `auth`: health, server metadata, /metrics and the API description need a
                    valid key too (any scope); else they stay open (load balancers, Prometheus).
    model_overrides: ModelConfig fields set over the settings of every model of `model_repository`,
                    its modelbay.yaml included, now and on later loads (`modelbay serve`'s model flags).
    models:         the models to serve; each entry is a ModelConfig.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001
    workers: int = 1
    max_body_bytes: int = 16 * 1024 * 1024
    graceful_timeout_s: float = 30.0
    read_timeout_s: float = 30.0
    max_connections: int = 1000
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = False
    tracing: bool = False
    model_repository: str | None = None
    model_control_mode: str = "explicit"
    load_models: list[str] = msgspec.field(default_factory=list)
    repository_poll_s: float = 15.0
    max_upload_bytes: int = 256 * 1024 * 1024
    auth: str | None = None
    auth_health: bool = False
    model_overrides: dict[str, Any] = msgspec.field(default_factory=dict)
    models: list[ModelConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.graceful_timeout_s < 0 or self.read_timeout_s <= 0 or self.max_connections < 1:
            raise msgspec.ValidationError(
                "graceful_timeout_s must be >= 0, read_timeout_s > 0 and max_connections >= 1"
            )
        if self.model_control_mode not in CONTROL_MODES:
            raise msgspec.ValidationError(
                f"model_control_mode must be one of {list(CONTROL_MODES)}, got {self.model_control_mode!r}"
            )
        if self.log_format not in ("text", "json"):
            raise msgspec.ValidationError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        if self.repository_poll_s <= 0 or self.max_upload_bytes < 1:
            raise msgspec.ValidationError("repository_poll_s must be > 0 and max_upload_bytes >= 1")
        if not (0 <= self.port <= 65535 and 0 <= self.grpc_port <= 65535):  # TCP ports (RFC 793)
            raise msgspec.ValidationError(
                f"port and grpc_port must be 0-65535, got {self.port} and {self.grpc_port}"
            )

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        model_overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Merge defaults < `MODELBAY_*` variables of `environ` < YAML `config_file` < `overrides`.

        A list setting's variable holds its items separated by commas (MODELBAY_LOAD_MODELS=a,b).

        The `models:` list comes whole from the highest source that has one; each entry is then
        merged over its model folder's modelbay.yaml, and `model_overrides` (ModelConfig fields:
        the CLI's model flags) over every entry (`model_entry`) and over the field of that name
        (for the models of the repository).
        Raises ModelLoadError naming the bad field when a value has the wrong type or is unknown.
        """
        merged: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            value = (environ or {}).get(f"MODELBAY_{name.upper()}")
            if value is not None and name != "models":
                merged[name] = value.split(",") if name == "load_models" else value
        if config_file is not None:
            merged = deep_merge(merged, read_yaml(Path(config_file)))
        merged = deep_merge(merged, dict(overrides or {}))
        entries = merged.pop("models", [])
        settings = convert(merged, cls, source=str(config_file or "settings"))
        if not isinstance(entries, list):
            raise ModelLoadError(f"{config_file or 'settings'}: models must be a list of model entries")
        models = [model_config(model_entry(entry, model_overrides)) for entry in entries]
        overrides_all = merge_model_settings(settings.model_overrides, model_overrides or {})
        return msgspec.structs.replace(settings, models=models, model_overrides=overrides_all)


def model_entry(entry: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One model's settings from every source, as a dict of ModelConfig fields (not converted yet).

    entry:     a `models:` entry (from --config, a model repository or the CLI's PATHs).
    overrides: fields set on the command line, for every model.
    Returns the folder's modelbay.yaml (when `entry["path"]` is a model folder) < `entry` <
    `overrides`, merged by `merge_model_settings`; an integer `version` becomes a string.
    Raises ModelLoadError when the entry is not a mapping or its manifest cannot be read.
    """
    if not isinstance(entry, Mapping):
        raise ModelLoadError(f"a models: entry must be a mapping of model settings, found {entry!r}")
    given = merge_model_settings(entry, overrides or {})
    folder = Path(str(given.get("path") or "")).expanduser()
    manifest = read_manifest(folder, given) if given.get("path") and folder.is_dir() else {}
    merged = merge_model_settings(manifest, given)
    if isinstance(merged.get("version"), int):
        merged["version"] = str(merged["version"])
    if isinstance(merged.get("traffic"), Mapping):
        merged["traffic"] = _versions_as_text(merged["traffic"])
    return merged


def _versions_as_text(traffic: Mapping[str, Any]) -> dict[str, Any]:
    """A `traffic:` mapping with its versions as strings: YAML reads `split: {2: 90}` and
    `shadow: {version: 4}` as numbers, and versions are strings (as in OIP)."""
    out = dict(traffic)
    if isinstance(out.get("split"), Mapping):
        out["split"] = {str(version): weight for version, weight in out["split"].items()}
    shadow = out.get("shadow")
    if isinstance(shadow, Mapping) and isinstance(shadow.get("version"), int):
        out["shadow"] = {**shadow, "version": str(shadow["version"])}
    return out


def merge_model_settings(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Model settings `base` updated by `top`: field by field, and the groups `image`, `batching`
    and `cache` key by key; any other value (arch_kwargs, inputs, default_output) is replaced whole."""
    out = dict(base)
    for key, value in top.items():
        if key in _GROUPS and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def model_config(fields: Mapping[str, Any]) -> ModelConfig:
    """`fields` (from `model_entry`) as a ModelConfig. Raises ModelLoadError naming the model and field."""
    path = Path(str(fields.get("path") or ""))
    manifest = path / MANIFEST_NAME
    source = str(manifest) if fields.get("path") and manifest.is_file() else f"model {fields.get('path')}"
    return convert(fields, ModelConfig, source)


def read_manifest(folder: Path, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings in `folder`'s modelbay.yaml, {} when it has none.

    A manifest that sets `trust_pickle: true` while `given` (what the user passed) does not set
    trust_pickle is logged as a WARNING: the folder alone then decides that code from its model
    file runs. Raises ModelLoadError when the file is not a readable YAML mapping.
    """
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return {}
    data = read_yaml(path)
    if str(data.get("trust_pickle")).lower() in ("true", "1") and "trust_pickle" not in (given or {}):
        log.warning(
            "the manifest at %s enabled unpickling (trust_pickle: true): code from the model file will "
            "run when it loads; remove that line unless you trust where this folder came from",
            path,
        )
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`. Raises ModelLoadError when it is missing or not a mapping."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a YAML mapping, found {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `top`; nested mappings are merged key by key, `top` winning."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def convert(data: Mapping[str, Any], kind: type[_T], source: str) -> _T:
    """`data` as a `kind` struct; strings from the environment are coerced (msgspec lax mode).

    Raises ModelLoadError with msgspec's path to the bad field, e.g. "$.batching.max_batch_size".
    """
    try:
        return msgspec.convert(dict(data), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc


def environment() -> dict[str, str]:
    """The process environment, read when called (never at import)."""
    return dict(os.environ)
