"""calendar-sync: booking events from Kafka onto Google Calendars."""
