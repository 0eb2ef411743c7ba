"""NRI, the Node Resource Interface: plugins that adjust containers as they are made."""
