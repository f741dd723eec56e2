"""txmetrics, one `pulumi up` per environment. Deploys:

- Event Hubs namespace (Standard, auto-inflate), hub `transactions`, consumer group `txmetrics`
- Storage: data account (raw-events; lifecycle policy from lifecycle/), host account for the
  Functions host and the deployment package
- PostgreSQL Flexible Server (Entra logins only), its Entra admin, database `txmetrics`
- Function App on Flex Consumption (Python 3.11) with a user-assigned identity and its roles
- with `privateNetworking`: VNet, Flex VNet integration, private endpoints and DNS zones
- Log Analytics, Application Insights, diagnostic settings
- the schema (yoyo migrations) and then the code bundle (OneDeploy, followed to its end)
The order and the reasons: infra/program.py.
"""

from infra import config
from infra.bundle import build_for_deploy
from infra.program import build

build(config.load(), build_for_deploy())
