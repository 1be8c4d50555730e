"""Azure Table storage plumbing shared by the audit trail, the ledger and the delta state."""
from __future__ import annotations


def table_service(storage: dict[str, str], credential=None):
    """A TableServiceClient for the host storage: connection string, or identity-based settings (whose
    service URIs Settings has completed for the cloud)."""
    from azure.data.tables import TableServiceClient

    connection = storage.get("AzureWebJobsStorage")
    if connection:
        return TableServiceClient.from_connection_string(connection)
    return TableServiceClient(storage["AzureWebJobsStorage__tableServiceUri"], credential=credential)


def probe(call, what: str) -> None:
    """Run a storage call for the doctor; a 403 becomes PermissionDeniedError naming `what`."""
    from azure.core.exceptions import HttpResponseError

    from shared.core.errors import PermissionDeniedError

    try:
        call()
    except HttpResponseError as error:
        if error.status_code == 403:
            raise PermissionDeniedError(f"{what}: 403 {error.reason}") from error
        raise


class LazyTable:
    """A table client whose table is created on first use, checked once per process."""

    def __init__(self, table_client):
        self._client = table_client
        self._ready = False

    def __call__(self):
        if not self._ready:
            from azure.core.exceptions import ResourceExistsError

            try:
                self._client.create_table()
            except ResourceExistsError:
                pass
            self._ready = True
        return self._client
