"""Guest-agent queries: each module is one question to a guest's agent (see :mod:`.query`)."""
