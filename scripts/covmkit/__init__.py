"""What covm's scripts share: build outputs found by asking cargo
(`build`), and one client for covm's API on its UNIX socket (`api`)."""
