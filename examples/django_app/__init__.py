"""A minimal Django project that sends aqueue tasks from its views (see README.md)."""
