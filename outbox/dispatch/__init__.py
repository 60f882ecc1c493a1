"""The dispatcher: claim due rows, run them, settle each outcome; its loops and metrics."""
