from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_out import ErrorOut
from ...models.explain_files_body import ExplainFilesBody
from ...models.explain_format import ExplainFormat
from ...models.explain_response import ExplainResponse
from ...types import UNSET, File, Response, Unset


def _get_kwargs(
    *,
    body: ExplainFilesBody | File | Unset = UNSET,
    format_: ExplainFormat | Unset = ExplainFormat.PNG,
    target: None | str | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    params: dict[str, Any] = {}

    json_format_: str | Unset = UNSET
    if not isinstance(format_, Unset):
        json_format_ = format_.value

    params["format"] = json_format_

    json_target: None | str | Unset
    if isinstance(target, Unset):
        json_target = UNSET
    else:
        json_target = target
    params["target"] = json_target

    json_top_k: int | None | Unset
    if isinstance(top_k, Unset):
        json_top_k = UNSET
    else:
        json_top_k = top_k
    params["top_k"] = json_top_k

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/v1/explain",
        "params": params,
    }

    if isinstance(body, ExplainFilesBody):
        _kwargs["files"] = body.to_multipart()

        headers["Content-Type"] = "multipart/form-data; boundary=+++"
    if isinstance(body, File):
        _kwargs["content"] = body.payload
        headers["Content-Type"] = "application/octet-stream"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorOut | ExplainResponse | None:
    if response.status_code == 200:
        response_200 = ExplainResponse.from_dict(response.json())

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
) -> Response[ErrorOut | ExplainResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: ExplainFilesBody | File | Unset = UNSET,
    format_: ExplainFormat | Unset = ExplainFormat.PNG,
    target: None | str | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
) -> Response[ErrorOut | ExplainResponse]:
    """Grad-CAM heat map for one image

     Where the model looked: Grad-CAM for the predicted (or a chosen) class.

    Args:
        format_ (ExplainFormat | Unset): png: the overlay image; json: base64 PNGs plus the
            prediction Default: ExplainFormat.PNG.
        target (None | str | Unset): Class to explain (default: the predicted one)
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        body (ExplainFilesBody):
        body (File):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorOut | ExplainResponse]
    """

    kwargs = _get_kwargs(
        body=body,
        format_=format_,
        target=target,
        top_k=top_k,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    body: ExplainFilesBody | File | Unset = UNSET,
    format_: ExplainFormat | Unset = ExplainFormat.PNG,
    target: None | str | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
) -> ErrorOut | ExplainResponse | None:
    """Grad-CAM heat map for one image

     Where the model looked: Grad-CAM for the predicted (or a chosen) class.

    Args:
        format_ (ExplainFormat | Unset): png: the overlay image; json: base64 PNGs plus the
            prediction Default: ExplainFormat.PNG.
        target (None | str | Unset): Class to explain (default: the predicted one)
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        body (ExplainFilesBody):
        body (File):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorOut | ExplainResponse
    """

    return sync_detailed(
        client=client,
        body=body,
        format_=format_,
        target=target,
        top_k=top_k,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: ExplainFilesBody | File | Unset = UNSET,
    format_: ExplainFormat | Unset = ExplainFormat.PNG,
    target: None | str | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
) -> Response[ErrorOut | ExplainResponse]:
    """Grad-CAM heat map for one image

     Where the model looked: Grad-CAM for the predicted (or a chosen) class.

    Args:
        format_ (ExplainFormat | Unset): png: the overlay image; json: base64 PNGs plus the
            prediction Default: ExplainFormat.PNG.
        target (None | str | Unset): Class to explain (default: the predicted one)
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        body (ExplainFilesBody):
        body (File):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorOut | ExplainResponse]
    """

    kwargs = _get_kwargs(
        body=body,
        format_=format_,
        target=target,
        top_k=top_k,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: ExplainFilesBody | File | Unset = UNSET,
    format_: ExplainFormat | Unset = ExplainFormat.PNG,
    target: None | str | Unset = UNSET,
    top_k: int | None | Unset = UNSET,
) -> ErrorOut | ExplainResponse | None:
    """Grad-CAM heat map for one image

     Where the model looked: Grad-CAM for the predicted (or a chosen) class.

    Args:
        format_ (ExplainFormat | Unset): png: the overlay image; json: base64 PNGs plus the
            prediction Default: ExplainFormat.PNG.
        target (None | str | Unset): Class to explain (default: the predicted one)
        top_k (int | None | Unset): How many classes to list (default: the server's --top-k)
        body (ExplainFilesBody):
        body (File):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorOut | ExplainResponse
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
            format_=format_,
            target=target,
            top_k=top_k,
        )
    ).parsed
