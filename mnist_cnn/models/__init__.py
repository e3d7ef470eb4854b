"""The nets (nets.py) and the LightningModule that trains any of them (module.py): the ML itself."""
