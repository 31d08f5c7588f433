"""NormLab's service side: settings, database access, the REST API and the CLI."""
