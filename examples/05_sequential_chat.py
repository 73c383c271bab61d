# Seed sample "Async and context", with `mellea` replaced by `mellea_actors`.
# Requires: mellea_actors
# Returns: None
import asyncio

import mellea_actors
from mellea_actors.stdlib.context import ChatContext


async def sequential_chat():
    m = mellea_actors.start_session(ctx=ChatContext())
    r1 = await m.achat("Hello.")
    r2 = await m.achat("Tell me more.")  # safe — r1 is fully resolved
    print(str(r2))
    # Output will vary — LLM responses depend on model and temperature.


asyncio.run(sequential_chat())
