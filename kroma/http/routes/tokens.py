"""API tokens (contract §2 rows 2-4, §3.14, §5.4): create, list, revoke."""

from __future__ import annotations

from litestar import Response, Router, delete, get, post
from litestar.params import FromPath, JSONBody

from kroma import auth
from kroma.domain.tokens import CreateToken
from kroma.http import responses
from kroma.http.deps import ServicesDep


@post("/token")
async def create_token(data: JSONBody[CreateToken], services: ServicesDep) -> Response[bytes]:
    """The plaintext token is in this response only; the log keeps its hash and prefix."""
    return responses.ok(auth_token=await auth.create_token(services, data))


@get("/tokens")
async def list_tokens(services: ServicesDep) -> Response[bytes]:
    tokens = await auth.list_tokens(services)
    return responses.ok(count=len(tokens), auth_tokens=tokens)


@delete("/tokens/{token_id:str}", status_code=200)
async def revoke_token(token_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    await auth.revoke_token(services, token_id)
    return responses.ok(deleted=True, token_id=token_id)


router = Router("/auth", route_handlers=[create_token, list_tokens, revoke_token], tags=["auth"])
