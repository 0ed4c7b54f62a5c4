"""What the gateway records about requests: metrics now; usage rows and payloads later."""
