"""One module per admin resource; each defines ``RESOURCE`` (see ``carapace.admin.registry``)."""
