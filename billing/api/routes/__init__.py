"""One router per resource; ``billing.api.app`` includes them all."""
