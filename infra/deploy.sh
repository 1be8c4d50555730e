#!/usr/bin/env bash
# Deploy the app with the Azure CLI: the custom Kusto role, the resources of infra/main.json, the
# Graph app roles, then the code. See infra/README.md and docs/operations.md.
#
#   infra/deploy.sh <resource-group> <location> [parameters-file]   (default infra/main.parameters.json)
set -euo pipefail
group="${1:?usage: $0 <resource-group> <location> [parameters-file]}"
location="${2:?usage: $0 <resource-group> <location> [parameters-file]}"
parameters="${3:-infra/main.parameters.json}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

subscription="$(az account show --query id -o tsv)"
az group create --name "$group" --location "$location" --output none

# 1. The custom role with exactly the ARM actions of shared/core/permissions.py, assignable in this
#    subscription (add the other clusters' subscriptions to AssignableScopes if they differ).
role_file="$(mktemp)"
sed "s#/subscriptions/<subscription-id>#/subscriptions/$subscription#" infra/kusto-sync-role.json >"$role_file"
role_name="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["Name"])' "$role_file")"
role_id="$(az role definition list --custom-role-only true --name "$role_name" --query "[0].name" -o tsv)"
if [[ -z "$role_id" ]]; then
  az role definition create --role-definition "@$role_file" --output none
  role_id="$(az role definition list --custom-role-only true --name "$role_name" --query "[0].name" -o tsv)"
else
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d["Id"] = sys.argv[2]; json.dump(d, open(sys.argv[1], "w"))' \
    "$role_file" "$role_id"
  az role definition update --role-definition "@$role_file" --output none
fi

# 2. The resources, every app setting, the alerts, and the role on the clusters.
outputs="$(az deployment group create --resource-group "$group" --template-file infra/main.json \
  --parameters "@$parameters" --parameters kustoRoleDefinitionId="$role_id" \
  --query properties.outputs -o json)"
app="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["functionAppName"]["value"])' <<<"$outputs")"
principal="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["identityPrincipalId"]["value"])' <<<"$outputs")"

# 3. The Graph application roles (not ARM resources).
infra/grant-graph-roles.sh "$principal"

# 4. The code, with its bytecode (a run-from-package deployment is read-only), built remotely from
#    requirements.txt; .funcignore keeps tests, docs and local settings out.
make bytecode
package="$(mktemp -d)/app.zip"
sed -e 's#/$#/*#' .funcignore >"$package.exclude"
zip -qr "$package" . -x@"$package.exclude"
az functionapp deployment source config-zip --resource-group "$group" --name "$app" --src "$package" \
  --build-remote true --output none
echo "deployed $app; SYNC_DRY_RUN stays true until you set it false (docs/operations.md, first run)"
