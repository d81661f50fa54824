"""vvolguard: the control plane that keeps VMs' secrets on volumes attached only when policy allows."""
