"""The pages a person sees in a browser: connect, choose a calendar, link health."""
