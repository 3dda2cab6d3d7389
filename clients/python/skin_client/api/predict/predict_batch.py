from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.batch_response import BatchResponse
from ...models.error_out import ErrorOut
from ...models.predict_batch_body import PredictBatchBody
from ...models.predict_batch_sex_type_0 import PredictBatchSexType0
from ...models.predict_batch_site_type_0 import PredictBatchSiteType0
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    body: PredictBatchBody,
    top_k: int | None | Unset = UNSET,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictBatchSexType0 | Unset = UNSET,
    site: None | PredictBatchSiteType0 | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    params: dict[str, Any] = {}

    json_top_k: int | None | Unset
    if isinstance(top_k, Unset):
        json_top_k = UNSET
    else:
        json_top_k = top_k
    params["top_k"] = json_top_k

    json_source: None | str | Unset
    if isinstance(source, Unset):
        json_source = UNSET
    else:
        json_source = source
    params["source"] = json_source

    json_age: float | None | Unset
    if isinstance(age, Unset):
        json_age = UNSET
    else:
        json_age = age
    params["age"] = json_age

    json_sex: None | str | Unset
    if isinstance(sex, Unset):
        json_sex = UNSET
    elif isinstance(sex, PredictBatchSexType0):
        json_sex = sex.value
    else:
        json_sex = sex
    params["sex"] = json_sex

    json_site: None | str | Unset
    if isinstance(site, Unset):
        json_site = UNSET
    elif isinstance(site, PredictBatchSiteType0):
        json_site = site.value
    else:
        json_site = site
    params["site"] = json_site

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/v1/predict/batch",
        "params": params,
    }

    _kwargs["files"] = body.to_multipart()

    headers["Content-Type"] = "multipart/form-data; boundary=+++"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> BatchResponse | ErrorOut | None:
    if response.status_code == 200:
        response_200 = BatchResponse.from_dict(response.json())

        return response_200

    if response.status_code == 401:
        response_401 = ErrorOut.from_dict(response.json())

        return response_401

    if response.status_code == 413:
        response_413 = ErrorOut.from_dict(response.json())

        return response_413

    if response.status_code == 415:
        response_415 = ErrorOut.from_dict(response.json())

        return response_415

    if response.status_code == 422:
        response_422 = ErrorOut.from_dict(response.json())

        return response_422

    if response.status_code == 429:
        response_429 = ErrorOut.from_dict(response.json())

        return response_429

    if response.status_code == 503:
        response_503 = ErrorOut.from_dict(response.json())

        return response_503

    if response.status_code == 504:
        response_504 = ErrorOut.from_dict(response.json())

        return response_504

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[BatchResponse | ErrorOut]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: PredictBatchBody,
    top_k: int | None | Unset = UNSET,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictBatchSexType0 | Unset = UNSET,
    site: None | PredictBatchSiteType0 | Unset = UNSET,
) -> Response[BatchResponse | ErrorOut]:
    """Classify several images

     Several images (repeated multipart field `files`). A bad file gets its own error
    entry; the others are still classified. `age`, `sex` and `site` apply to every image
    (one patient).

    Args:
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        source (None | str | Unset): Where the images come from (a clinic or data source; letters,
            digits, '.', '_' and '-', at most 64): logged with each prediction for drift per source
            (default: api)
        age (float | None | Unset): The patient's age in years (used by models trained with --use-
            metadata; otherwise ignored, with a warning)
        sex (None | PredictBatchSexType0 | Unset): The patient's sex (as age)
        site (None | PredictBatchSiteType0 | Unset): Anatomical site, e.g. back, face, lower
            extremity (as age)
        body (PredictBatchBody):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[BatchResponse | ErrorOut]
    """

    kwargs = _get_kwargs(
        body=body,
        top_k=top_k,
        source=source,
        age=age,
        sex=sex,
        site=site,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    body: PredictBatchBody,
    top_k: int | None | Unset = UNSET,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictBatchSexType0 | Unset = UNSET,
    site: None | PredictBatchSiteType0 | Unset = UNSET,
) -> BatchResponse | ErrorOut | None:
    """Classify several images

     Several images (repeated multipart field `files`). A bad file gets its own error
    entry; the others are still classified. `age`, `sex` and `site` apply to every image
    (one patient).

    Args:
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        source (None | str | Unset): Where the images come from (a clinic or data source; letters,
            digits, '.', '_' and '-', at most 64): logged with each prediction for drift per source
            (default: api)
        age (float | None | Unset): The patient's age in years (used by models trained with --use-
            metadata; otherwise ignored, with a warning)
        sex (None | PredictBatchSexType0 | Unset): The patient's sex (as age)
        site (None | PredictBatchSiteType0 | Unset): Anatomical site, e.g. back, face, lower
            extremity (as age)
        body (PredictBatchBody):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        BatchResponse | ErrorOut
    """

    return sync_detailed(
        client=client,
        body=body,
        top_k=top_k,
        source=source,
        age=age,
        sex=sex,
        site=site,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: PredictBatchBody,
    top_k: int | None | Unset = UNSET,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictBatchSexType0 | Unset = UNSET,
    site: None | PredictBatchSiteType0 | Unset = UNSET,
) -> Response[BatchResponse | ErrorOut]:
    """Classify several images

     Several images (repeated multipart field `files`). A bad file gets its own error
    entry; the others are still classified. `age`, `sex` and `site` apply to every image
    (one patient).

    Args:
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        source (None | str | Unset): Where the images come from (a clinic or data source; letters,
            digits, '.', '_' and '-', at most 64): logged with each prediction for drift per source
            (default: api)
        age (float | None | Unset): The patient's age in years (used by models trained with --use-
            metadata; otherwise ignored, with a warning)
        sex (None | PredictBatchSexType0 | Unset): The patient's sex (as age)
        site (None | PredictBatchSiteType0 | Unset): Anatomical site, e.g. back, face, lower
            extremity (as age)
        body (PredictBatchBody):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[BatchResponse | ErrorOut]
    """

    kwargs = _get_kwargs(
        body=body,
        top_k=top_k,
        source=source,
        age=age,
        sex=sex,
        site=site,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: PredictBatchBody,
    top_k: int | None | Unset = UNSET,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictBatchSexType0 | Unset = UNSET,
    site: None | PredictBatchSiteType0 | Unset = UNSET,
) -> BatchResponse | ErrorOut | None:
    """Classify several images

     Several images (repeated multipart field `files`). A bad file gets its own error
    entry; the others are still classified. `age`, `sex` and `site` apply to every image
    (one patient).

    Args:
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        source (None | str | Unset): Where the images come from (a clinic or data source; letters,
            digits, '.', '_' and '-', at most 64): logged with each prediction for drift per source
            (default: api)
        age (float | None | Unset): The patient's age in years (used by models trained with --use-
            metadata; otherwise ignored, with a warning)
        sex (None | PredictBatchSexType0 | Unset): The patient's sex (as age)
        site (None | PredictBatchSiteType0 | Unset): Anatomical site, e.g. back, face, lower
            extremity (as age)
        body (PredictBatchBody):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        BatchResponse | ErrorOut
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
            top_k=top_k,
            source=source,
            age=age,
            sex=sex,
            site=site,
        )
    ).parsed
