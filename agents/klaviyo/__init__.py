"""The Klaviyo edge: request bodies, the HTTP client, retries, and batch delivery."""
