"""A run's files: the model dict (``model``: an agent in and out of a model file) and the checkpoint
directories (``checkpoint``: atomic writes, versioned reads). Training writes them; export reads them.
"""
