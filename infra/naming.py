"""Names that can be had. Storage accounts, Function Apps, PostgreSQL servers and Event Hubs
namespaces have globally unique DNS names: a fixed name such as `txmdevdata` makes `pulumi up`
fail for anyone whose name is taken anywhere in Azure. Names here carry a short suffix derived
from (subscription, project, stack), stable across runs and different between subscriptions,
as Microsoft's Flex Consumption samples do with `uniqueString(subscription().id, environmentName,
location)` (Azure-Samples/functions-quickstart-python-http-azd, infra/main.bicep). Config can
override each name (infra/config.py); every name is checked against Azure's rules:

- storage account: 3-24 characters, lower-case letters and digits only
  (Learn, "Resource naming rules", Microsoft.Storage/storageAccounts)
- Function App (Microsoft.Web/sites): 2-60 characters, letters, digits and hyphens, no hyphen
  at either end; the derived name stays within 32 characters, the length the Functions host
  uses for its host id (longer names can collide on shared storage)
- PostgreSQL flexible server: 3-63 characters, lower-case letters, digits and hyphens, no hyphen
  at either end
- Event Hubs namespace: 8-50 characters, letters, digits and hyphens, starts with a letter,
  ends with a letter or digit, not ending in `-sb` or `-mgmt`. Learn says 6-50, but the API
  spec's pattern (`^[a-zA-Z][a-zA-Z0-9-]{6,50}[a-zA-Z0-9]$`, Microsoft.EventHub 2024-01-01, the
  version pulumi-azure-native 3.29 uses) needs 8, and the provider checks inputs against it at
  preview ("'namespaceName' does not match expression"; the Azure CLI refuses 'dev-lab' with the
  same pattern, Azure/azure-cli#31108)
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

SUFFIX_LENGTH = 10            # 50 bits: collisions between stacks are not a practical concern


class NameError_(ValueError):
    """A name Azure would refuse; the message says which rule it breaks."""


def unique_suffix(subscription_id: str, project: str, stack: str) -> str:
    """Stable for the same (subscription, project, stack); lower-case letters and digits 2-7."""
    digest = hashlib.sha256(f"{subscription_id.lower()}|{project}|{stack}".encode()).digest()
    return base64.b32encode(digest).decode().lower().rstrip("=")[:SUFFIX_LENGTH]


def dns_token(text: str, max_length: int) -> str:
    """Lower-case letters, digits and single hyphens, no hyphen at either end."""
    token = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:max_length].strip("-")
    return token or "stack"


def alnum_token(text: str, max_length: int) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())[:max_length] or "s"


def check_storage_account(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{3,24}", name):
        raise NameError_("a storage account name has 3-24 characters, lower-case letters and digits only")
    return name


def check_function_app(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,58}[A-Za-z0-9])?", name) or len(name) < 2:
        raise NameError_("a Function App name has 2-60 characters, letters, digits and hyphens, and neither starts "
                         "nor ends with a hyphen")
    return name


def check_postgres_server(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])", name):
        raise NameError_("a PostgreSQL server name has 3-63 characters, lower-case letters, digits and hyphens, and "
                         "neither starts nor ends with a hyphen")
    return name


def check_eventhubs_namespace(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{6,48}[A-Za-z0-9]", name) or name.lower().endswith(("-sb", "-mgmt")):
        raise NameError_("an Event Hubs namespace name has 8-50 characters, letters, digits and hyphens, starts with "
                         "a letter, ends with a letter or digit, and does not end in -sb or -mgmt")
    return name


@dataclass(frozen=True)
class GlobalNames:
    storage_account: str          # data: raw-events archive
    host_storage_account: str     # Functions host state and the deployment package
    function_app: str
    postgres_server: str
    eventhubs_namespace: str


def global_names(subscription_id: str, project: str, stack: str, overrides: dict[str, str]) -> GlobalNames:
    suffix = unique_suffix(subscription_id, project, stack)
    short, dns = alnum_token(stack, 7), dns_token(stack, 12)
    names = GlobalNames(
        storage_account=overrides.get("storageAccountName") or f"txm{short}data{suffix}",
        host_storage_account=overrides.get("hostStorageAccountName") or f"txm{short}host{suffix}",
        function_app=overrides.get("functionAppName") or f"txm-{dns}-func-{suffix}",
        postgres_server=overrides.get("postgresServerName") or f"txm-{dns}-pg-{suffix}",
        eventhubs_namespace=overrides.get("eventHubsNamespaceName") or f"txm-{dns}-ehns-{suffix}",
    )
    check_storage_account(names.storage_account)
    check_storage_account(names.host_storage_account)
    check_function_app(names.function_app)
    check_postgres_server(names.postgres_server)
    check_eventhubs_namespace(names.eventhubs_namespace)
    if names.storage_account == names.host_storage_account:
        raise NameError_(f"the data and host storage accounts would share the name {names.storage_account!r}")
    return names
