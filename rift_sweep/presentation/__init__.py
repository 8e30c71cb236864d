"""What people read: terminal tables, charts and the front report, drawn from procedure's records."""
