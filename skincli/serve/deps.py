"""The routes' dependencies, as `Annotated[..., Depends(...)]` aliases, and the query
parameters they share. The query types say exactly what the server accepts, so a request the
OpenAPI schema allows is never refused as malformed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from skincli.metahead import OTHER_SITE, SEXES, SITE_GROUPS
from skincli.serve.auth import HEADER
from skincli.serve.model import LoadedModel
from skincli.serve.state import ServerState


def get_state(request: Request) -> ServerState:
    """The server's state (settings, model holder, batcher, metrics), made by create_app."""
    return request.app.state.skin  # type: ignore[no-any-return]


State = Annotated[ServerState, Depends(get_state)]

# Declared in the OpenAPI schema so /docs can authorise; checked by KeyChecker, not by these.
_API_KEY = APIKeyHeader(name=HEADER, auto_error=False, scheme_name="ApiKey",
                        description="An API key of the server (when it has keys)")
_BEARER = HTTPBearer(auto_error=False, scheme_name="Bearer",
                     description="The same API key as a bearer token")


# Dependencies run before FastAPI validates the query, so a caller without a key gets 401
# whatever its parameters (not a 422 that tells it which parameters exist).
def require_key(request: Request, state: State, _key: str | None = Security(_API_KEY),
                _bearer: Any = Security(_BEARER)) -> None:
    """401 unless the request carries a valid key (when the server has keys)."""
    state.keys.require(request)


def require_admin(request: Request, state: State, _key: str | None = Security(_API_KEY),
                  _bearer: Any = Security(_BEARER)) -> None:
    """401/403 unless the request carries a valid key, even on a server without keys."""
    state.keys.require(request, always=True)


def deadline(request: Request, state: State) -> float:
    """The request's deadline (perf_counter seconds): its start plus the server's timeout."""
    return float(request.scope["skin.start"]) + state.settings.timeout_s


Deadline = Annotated[float, Depends(deadline)]


def answering(request: Request, state: ServerState) -> LoadedModel:
    """The model this request uses from now on; the response headers name this one.

    Called by the routes once the upload is read (not a dependency): a reload that lands
    while a slow upload arrives already answers it."""
    model = state.model()
    request.scope["skin.model"] = model
    return model


TopK = Annotated[int | None, Query(
    ge=1, le=1000, description="How many classes to list (default: the server's --top-k)")]

# What skincli.metahead.parse_inputs understands: the sexes, and the anatomical sites it maps
# onto the general sites of a metadata term (with "other" for the rest).
SiteName = Literal[tuple(sorted({*SITE_GROUPS, OTHER_SITE}))]  # type: ignore[valid-type]
SexName = Literal[SEXES]  # type: ignore[valid-type]

Age = Annotated[float | None, Query(
    ge=0, le=120, description="The patient's age in years (used by models trained with "
    "--use-metadata; otherwise ignored, with a warning)")]
Sex = Annotated[SexName | None, Query(description="The patient's sex (as age)")]
Site = Annotated[SiteName | None, Query(
    description="Anatomical site, e.g. back, face, lower extremity (as age)")]


def patient(age: Age = None, sex: Sex = None, site: Site = None) -> dict[str, str] | None:
    """The request's metadata record ({sex, age_band, site}), or None when it gives none."""
    if age is None and sex is None and site is None:
        return None
    from skincli.metahead import parse_inputs

    return parse_inputs(age, sex, site)


Patient = Annotated[dict[str, str] | None, Depends(patient)]

# Where the images come from (a clinic, a device, a data source as named in `skin split`):
# logged with each prediction so `skin monitor drift` tests every source on its own.
Source = Annotated[str | None, Query(
    min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    description="Where the images come from (a clinic or data source; letters, digits, "
    "'.', '_' and '-', at most 64): logged with each prediction for drift per source "
    "(default: api)")]
