"""kopf handlers for SelfPlayRun (filled by the operator work)."""
