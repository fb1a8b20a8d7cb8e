"""Device drivers: one module per device class, each with real backends and a simulator."""
