"""Who is deploying: the PostgreSQL Entra administrator follows the deployer, a user (az login)
or a service principal / managed identity (CI), unless config pins one (infra/config.py).

The kind and the name come from the claims of the deployer's own Azure Resource Manager token
(azure-native `getClientToken`); the token is only read here, never stored or exported:
- `idtyp` is `user` or `app` when present; otherwise a delegated (user) token carries `scp`
  and an app-only token does not (Learn, "Access token claims reference": scp "only included
  for user tokens", idtyp optional claim).
- the PostgreSQL administrator's principal name is a user's UPN, or a service principal's
  display name (Learn, "Manage Microsoft Entra roles in Azure Database for PostgreSQL":
  the role name must match the principal's name); tokens of users carry `upn` (or
  `unique_name`), app tokens may carry `app_displayname`. When they do not, config must say.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, EntraAdmin


@dataclass(frozen=True)
class Principal:
    object_id: str
    name: str
    principal_type: str        # User, Group or ServicePrincipal (the PostgreSQL Administrator's principalType)

    @property
    def pg_type(self) -> str:
        """The objectType word of pgaadauth: user, group or service."""
        return {"User": "user", "Group": "group"}.get(self.principal_type, "service")


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (it is our own token; only names are read from it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise ConfigError(f"the deployer's Azure token could not be read ({exc}); log in again with `az login`, or "
                          "pin the administrator with txmetrics:postgresEntraAdminObjectId/Name/Type") from None
    if not isinstance(claims, dict):
        raise ConfigError("the deployer's Azure token has no claims; log in again with `az login`")
    return claims


def deployer_principal(token: str, object_id: str, pinned: EntraAdmin | None = None,
                       name_override: str | None = None) -> Principal:
    if pinned is not None:
        return Principal(object_id=pinned.object_id, name=pinned.name, principal_type=pinned.principal_type)
    claims = token_claims(token)
    idtyp = claims.get("idtyp")
    is_user = idtyp == "user" if idtyp in ("user", "app") else "scp" in claims
    oid = str(claims.get("oid") or object_id)
    if is_user:
        name = name_override or claims.get("upn") or claims.get("unique_name") or claims.get("preferred_username")
        kind = "User"
    else:
        name = name_override or claims.get("app_displayname")
        kind = "ServicePrincipal"
    if not name:
        raise ConfigError(f"the deploying {'user' if is_user else 'service principal'} ({oid}) has no name in its "
                          "Azure token, and PostgreSQL needs it as the administrator's role name; set it with "
                          "`pulumi config set postgresEntraAdminName \"$(az ad sp show --id <appId> --query "
                          "displayName -o tsv)\"`")
    return Principal(object_id=oid, name=str(name), principal_type=kind)
