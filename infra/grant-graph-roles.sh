#!/usr/bin/env bash
# Grant the app's managed identity the Microsoft Graph application roles it needs: exactly
# GRAPH_ROLES of shared/core/permissions.py (the one list; docs/permissions.md says why each).
# Graph app roles are not ARM resources, so the ARM template cannot grant them. Needs an Azure CLI
# login allowed to grant app roles (Privileged Role Administrator, or Global Administrator).
#
#   infra/grant-graph-roles.sh <identity-principal-id> [--dry-run]
#
# --dry-run prints the roles and the calls without calling anything. Roles already granted are left.
set -euo pipefail
principal="${1:?usage: $0 <identity-principal-id> [--dry-run]}"
dry_run="${2:-}"
root="$(cd "$(dirname "$0")/.." && pwd)"
graph_app_id="00000003-0000-0000-c000-000000000000"  # Microsoft Graph's appId, the same in every tenant
roles="$(cd "$root" && "${PYTHON:-python3}" -c \
  'from shared.core.permissions import graph_role_names; print("\n".join(graph_role_names()))')"

if [[ "$dry_run" == "--dry-run" ]]; then
  for role in $roles; do
    echo "grant $role"
    echo "  az rest --method POST --uri <graph>/v1.0/servicePrincipals/$principal/appRoleAssignments" \
         "--body {principalId: $principal, resourceId: <Graph's service principal>, appRoleId: <id of $role>}"
  done
  exit 0
fi

graph="$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv)"
graph="${graph%/}"
graph_sp="$(az ad sp show --id "$graph_app_id" --query id -o tsv)"
granted="$(az rest --method GET --uri "$graph/v1.0/servicePrincipals/$principal/appRoleAssignments" \
  --query "value[?resourceId=='$graph_sp'].appRoleId" -o tsv)"
for role in $roles; do
  role_id="$(az ad sp show --id "$graph_app_id" \
    --query "appRoles[?value=='$role' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv)"
  if grep -qx "$role_id" <<<"$granted"; then
    echo "already granted: $role"
    continue
  fi
  echo "grant $role"
  az rest --method POST --uri "$graph/v1.0/servicePrincipals/$principal/appRoleAssignments" \
    --headers "Content-Type=application/json" \
    --body "{\"principalId\": \"$principal\", \"resourceId\": \"$graph_sp\", \"appRoleId\": \"$role_id\"}" >/dev/null
done
