"""Generated from proto/ by `python -m scheduler.devtools.protogen`; do not edit by hand."""
