"""The report stage: compare a source's tags with its variants' tags, calibrate, write report.json and report.html."""
