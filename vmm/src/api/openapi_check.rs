//! Checks resources/openapi/covm.yaml against Cloud Hypervisor's OpenAPI document.
