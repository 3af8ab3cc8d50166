"""Test-only builders, kept out of the installed package: synthetic datasets on disk
(`helpers.synthetic`) and small literal tile/entity tables (`helpers.tables`)."""
