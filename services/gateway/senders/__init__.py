"""Where replies go: the Cloud API, Twilio, or the dev outbox."""
