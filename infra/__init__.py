"""The local stack and deployment helpers, all built from template.yaml."""
