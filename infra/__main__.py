"""txmetrics, one `pulumi up` per environment. Deploys:

- Event Hubs namespace (Standard, auto-inflate), hub `transactions`, consumer group `txmetrics`
- Storage: data account (containers raw-events, deployments; lifecycle policy from lifecycle/),
  runtime account for the Functions host
- PostgreSQL Flexible Server, database `txmetrics`, firewall rules, Entra admin
- Function App on Flex Consumption (Python 3.11) with a user-assigned identity and its roles
- Log Analytics, Application Insights, diagnostic settings
- the schema (yoyo migrations) and then the code bundle (OneDeploy)
"""

from infra import config
from infra.bundle import build_for_deploy
from infra.program import build

build(config.load(), build_for_deploy())
