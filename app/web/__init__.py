"""The built-in dashboard and the offline API docs: static files served by the API itself."""
