"""The article with ``body`` renamed to ``text`` (still read from the ``body`` column)."""

from pydantic import BaseModel, Field


class Article(BaseModel):
    id: int
    title: str
    text: str = Field(validation_alias="body")
