from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_out import ErrorOut
from ...models.reload_response import ReloadResponse
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    run: None | str | Unset = UNSET,
) -> dict[str, Any]:

    params: dict[str, Any] = {}

    json_run: None | str | Unset
    if isinstance(run, Unset):
        json_run = UNSET
    else:
        json_run = run
    params["run"] = json_run

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/v1/model/reload",
        "params": params,
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorOut | ReloadResponse | None:
    if response.status_code == 200:
        response_200 = ReloadResponse.from_dict(response.json())

        return response_200

    if response.status_code == 401:
        response_401 = ErrorOut.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = ErrorOut.from_dict(response.json())

        return response_403

    if response.status_code == 409:
        response_409 = ErrorOut.from_dict(response.json())

        return response_409

    if response.status_code == 422:
        response_422 = ErrorOut.from_dict(response.json())

        return response_422

    if response.status_code == 429:
        response_429 = ErrorOut.from_dict(response.json())

        return response_429

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[ErrorOut | ReloadResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    run: None | str | Unset = UNSET,
) -> Response[ErrorOut | ReloadResponse]:
    """Switch to another run atomically (API key required)

     Load the run fully and warm it, then swap: requests in flight finish on the old
    model, later ones use the new one; no request sees a half-loaded model.

    Args:
        run (None | str | Unset): Run name under the runs folder (default: the run configured at
            start-up, or runs/CURRENT)

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorOut | ReloadResponse]
    """

    kwargs = _get_kwargs(
        run=run,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    run: None | str | Unset = UNSET,
) -> ErrorOut | ReloadResponse | None:
    """Switch to another run atomically (API key required)

     Load the run fully and warm it, then swap: requests in flight finish on the old
    model, later ones use the new one; no request sees a half-loaded model.

    Args:
        run (None | str | Unset): Run name under the runs folder (default: the run configured at
            start-up, or runs/CURRENT)

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorOut | ReloadResponse
    """

    return sync_detailed(
        client=client,
        run=run,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    run: None | str | Unset = UNSET,
) -> Response[ErrorOut | ReloadResponse]:
    """Switch to another run atomically (API key required)

     Load the run fully and warm it, then swap: requests in flight finish on the old
    model, later ones use the new one; no request sees a half-loaded model.

    Args:
        run (None | str | Unset): Run name under the runs folder (default: the run configured at
            start-up, or runs/CURRENT)

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorOut | ReloadResponse]
    """

    kwargs = _get_kwargs(
        run=run,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    run: None | str | Unset = UNSET,
) -> ErrorOut | ReloadResponse | None:
    """Switch to another run atomically (API key required)

     Load the run fully and warm it, then swap: requests in flight finish on the old
    model, later ones use the new one; no request sees a half-loaded model.

    Args:
        run (None | str | Unset): Run name under the runs folder (default: the run configured at
            start-up, or runs/CURRENT)

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorOut | ReloadResponse
    """

    return (
        await asyncio_detailed(
            client=client,
            run=run,
        )
    ).parsed
