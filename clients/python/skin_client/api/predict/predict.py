from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_out import ErrorOut
from ...models.predict_files_body import PredictFilesBody
from ...models.predict_format import PredictFormat
from ...models.predict_response import PredictResponse
from ...models.predict_sex_type_0 import PredictSexType0
from ...models.predict_site_type_0 import PredictSiteType0
from ...types import UNSET, File, Response, Unset


def _get_kwargs(
    *,
    body: PredictFilesBody | File | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
    format_: PredictFormat | Unset = PredictFormat.JSON,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictSexType0 | Unset = UNSET,
    site: None | PredictSiteType0 | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    params: dict[str, Any] = {}

    json_top_k: int | None | Unset
    if isinstance(top_k, Unset):
        json_top_k = UNSET
    else:
        json_top_k = top_k
    params["top_k"] = json_top_k

    json_format_: str | Unset = UNSET
    if not isinstance(format_, Unset):
        json_format_ = format_.value

    params["format"] = json_format_

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
    elif isinstance(sex, PredictSexType0):
        json_sex = sex.value
    else:
        json_sex = sex
    params["sex"] = json_sex

    json_site: None | str | Unset
    if isinstance(site, Unset):
        json_site = UNSET
    elif isinstance(site, PredictSiteType0):
        json_site = site.value
    else:
        json_site = site
    params["site"] = json_site

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/v1/predict",
        "params": params,
    }

    if isinstance(body, PredictFilesBody):
        _kwargs["files"] = body.to_multipart()

        headers["Content-Type"] = "multipart/form-data; boundary=+++"
    if isinstance(body, File):
        _kwargs["content"] = body.payload
        headers["Content-Type"] = "application/octet-stream"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorOut | PredictResponse | None:
    if response.status_code == 200:
        response_200 = PredictResponse.from_dict(response.json())

        return response_200

    if response.status_code == 401:
        response_401 = ErrorOut.from_dict(response.json())

        return response_401

    if response.status_code == 406:
        response_406 = ErrorOut.from_dict(response.json())

        return response_406

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
) -> Response[ErrorOut | PredictResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: PredictFilesBody | File | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
    format_: PredictFormat | Unset = PredictFormat.JSON,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictSexType0 | Unset = UNSET,
    site: None | PredictSiteType0 | Unset = UNSET,
) -> Response[ErrorOut | PredictResponse]:
    """Classify one image

     One image (multipart field `file`, or the raw body): calibrated top-k classes, the
    uncertain flag, and the model that answered. `age`, `sex` and `site` feed a model
    trained with the patient's metadata.

    Args:
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        format_ (PredictFormat | Unset): json, or fhir for an HL7 FHIR R4 Bundle (as Accept:
            application/fhir+json) Default: PredictFormat.JSON.
        source (None | str | Unset): Where the images come from (a clinic or data source; letters,
            digits, '.', '_' and '-', at most 64): logged with each prediction for drift per source
            (default: api)
        age (float | None | Unset): The patient's age in years (used by models trained with --use-
            metadata; otherwise ignored, with a warning)
        sex (None | PredictSexType0 | Unset): The patient's sex (as age)
        site (None | PredictSiteType0 | Unset): Anatomical site, e.g. back, face, lower extremity
            (as age)
        body (PredictFilesBody):
        body (File):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorOut | PredictResponse]
    """

    kwargs = _get_kwargs(
        body=body,
        top_k=top_k,
        format_=format_,
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
    body: PredictFilesBody | File | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
    format_: PredictFormat | Unset = PredictFormat.JSON,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictSexType0 | Unset = UNSET,
    site: None | PredictSiteType0 | Unset = UNSET,
) -> ErrorOut | PredictResponse | None:
    """Classify one image

     One image (multipart field `file`, or the raw body): calibrated top-k classes, the
    uncertain flag, and the model that answered. `age`, `sex` and `site` feed a model
    trained with the patient's metadata.

    Args:
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        format_ (PredictFormat | Unset): json, or fhir for an HL7 FHIR R4 Bundle (as Accept:
            application/fhir+json) Default: PredictFormat.JSON.
        source (None | str | Unset): Where the images come from (a clinic or data source; letters,
            digits, '.', '_' and '-', at most 64): logged with each prediction for drift per source
            (default: api)
        age (float | None | Unset): The patient's age in years (used by models trained with --use-
            metadata; otherwise ignored, with a warning)
        sex (None | PredictSexType0 | Unset): The patient's sex (as age)
        site (None | PredictSiteType0 | Unset): Anatomical site, e.g. back, face, lower extremity
            (as age)
        body (PredictFilesBody):
        body (File):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorOut | PredictResponse
    """

    return sync_detailed(
        client=client,
        body=body,
        top_k=top_k,
        format_=format_,
        source=source,
        age=age,
        sex=sex,
        site=site,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: PredictFilesBody | File | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
    format_: PredictFormat | Unset = PredictFormat.JSON,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictSexType0 | Unset = UNSET,
    site: None | PredictSiteType0 | Unset = UNSET,
) -> Response[ErrorOut | PredictResponse]:
    """Classify one image

     One image (multipart field `file`, or the raw body): calibrated top-k classes, the
    uncertain flag, and the model that answered. `age`, `sex` and `site` feed a model
    trained with the patient's metadata.

    Args:
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        format_ (PredictFormat | Unset): json, or fhir for an HL7 FHIR R4 Bundle (as Accept:
            application/fhir+json) Default: PredictFormat.JSON.
        source (None | str | Unset): Where the images come from (a clinic or data source; letters,
            digits, '.', '_' and '-', at most 64): logged with each prediction for drift per source
            (default: api)
        age (float | None | Unset): The patient's age in years (used by models trained with --use-
            metadata; otherwise ignored, with a warning)
        sex (None | PredictSexType0 | Unset): The patient's sex (as age)
        site (None | PredictSiteType0 | Unset): Anatomical site, e.g. back, face, lower extremity
            (as age)
        body (PredictFilesBody):
        body (File):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorOut | PredictResponse]
    """

    kwargs = _get_kwargs(
        body=body,
        top_k=top_k,
        format_=format_,
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
    body: PredictFilesBody | File | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
    format_: PredictFormat | Unset = PredictFormat.JSON,
    source: None | str | Unset = UNSET,
    age: float | None | Unset = UNSET,
    sex: None | PredictSexType0 | Unset = UNSET,
    site: None | PredictSiteType0 | Unset = UNSET,
) -> ErrorOut | PredictResponse | None:
    """Classify one image

     One image (multipart field `file`, or the raw body): calibrated top-k classes, the
    uncertain flag, and the model that answered. `age`, `sex` and `site` feed a model
    trained with the patient's metadata.

    Args:
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        format_ (PredictFormat | Unset): json, or fhir for an HL7 FHIR R4 Bundle (as Accept:
            application/fhir+json) Default: PredictFormat.JSON.
        source (None | str | Unset): Where the images come from (a clinic or data source; letters,
            digits, '.', '_' and '-', at most 64): logged with each prediction for drift per source
            (default: api)
        age (float | None | Unset): The patient's age in years (used by models trained with --use-
            metadata; otherwise ignored, with a warning)
        sex (None | PredictSexType0 | Unset): The patient's sex (as age)
        site (None | PredictSiteType0 | Unset): Anatomical site, e.g. back, face, lower extremity
            (as age)
        body (PredictFilesBody):
        body (File):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorOut | PredictResponse
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
            top_k=top_k,
            format_=format_,
            source=source,
            age=age,
            sex=sex,
            site=site,
        )
    ).parsed
