"""What acts: the Faust app and agents, the Klaviyo sync, web views, the sandbox, the CLI."""
