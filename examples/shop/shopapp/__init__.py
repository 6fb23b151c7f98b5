"""The example shop: a small web API whose pricing runs in two versions side by side."""
