"""``python -m accelrl.deploy.virtual --config deploy/virtual_ares_ea.yaml``: run the IOC."""

from accelrl.deploy.virtual.serve import main

if __name__ == "__main__":
    main()
