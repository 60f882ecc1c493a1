"""Email as an app's event source: routing recipients to apps
(``addresses``), parsing a message into an event (``parse``), and storing
what arrived (``inbound``); docs/email.md."""
