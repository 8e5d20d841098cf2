"""Names of the conversation's steps that the functions move the call to.

The conversation itself is laid out in `conversation.py`; the functions only
name where a result takes it, so the model can never move itself forward.
"""

OFFER = "offer"
AWAIT_CODE = "await_code"
VERIFIED = "verified"
LOCKED = "locked"
