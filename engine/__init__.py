"""The verification engine: decisions, records and events, shared by every interface."""
