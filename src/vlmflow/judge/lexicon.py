"""Closed word lists for the offline judge: function words, and what the paper says is no object.

The paper's judge prompt asks for "tangible objects that can be interacted with" and ignores
colours, attributes, positions, places, weather, road, lines and sky. WordNet's hierarchy decides
most cases; these lists hold the rest: words whose frequent senses are physical but which a scene
description uses for the setting (kitchen, field, wall), for the picture itself (image, background),
or as a quantity (a pair of, a group of).
"""

from __future__ import annotations

DETERMINERS = frozenset(
    "a an the this that these those some several many few each every any another other all both "
    "its his her their our my your one two three four five six seven eight nine ten eleven twelve "
    "dozen dozens numerous various multiple single lone".split()
)
SUBJECT_PRONOUNS = frozenset("he she it they we i you who which there".split())
PREPOSITIONS = frozenset(
    "on in at of with by near next to from under over above below behind beside besides between "
    "across along alongside around through into onto toward towards inside outside against for "
    "up down off out about like among amid beneath underneath upon within via past atop beyond "
    "during".split()
)
CONJUNCTIONS = frozenset("and or but nor while as because so yet where when whereas".split())
AUXILIARIES = frozenset(
    "is are was were be been being am has have had having do does did can could will would may "
    "might shall should must appear appears appeared seem seems seemed look looks".split()
)
ADVERBS = frozenset(
    "also just only very not too quite rather still even then there here now perhaps possibly "
    "probably likely clearly slightly partially partly mostly mainly nearby overhead away together "
    "again already almost well".split()
)
# Negative function words: "no cars", "without people" (the offline and scene judges read every
# phrasing of absence from `negation.PHRASINGS`, which opens with these).
NEGATORS = frozenset("no without nor neither".split())
CLAUSE_BREAKS = frozenset(". , ; : ! ? ( ) but while although though whereas".split())
# closed-class words: never an object name, never a modifier inside a noun phrase
FUNCTION_WORDS = (
    DETERMINERS | SUBJECT_PRONOUNS | PREPOSITIONS | CONJUNCTIONS | AUXILIARIES | ADVERBS | NEGATORS
)

# Heads of quantity phrases: "a pair of glasses" names glasses, not a pair.
PARTITIVES = frozenset(
    "pair couple group set stack pile row line lot bunch number variety collection array series "
    "slice piece scoop sprig wedge head roll bit handful herd flock school swarm team crowd "
    "kind type sort assortment selection range cluster patch strip loaf bundle batch".split()
)

# Group nouns that stand for people ("people walking", "a crowd", "the crew").
PEOPLE_GROUPS = frozenset("people crowd crew team couple family audience folks".split())

COLOURS = frozenset(
    "red orange yellow green blue purple violet pink brown black white gray grey silver gold "
    "golden beige tan maroon navy teal turquoise cyan magenta crimson ivory cream chestnut "
    "bronze copper olive lime lavender scarlet amber khaki".split()
)

# Words that name the setting, the picture, a surface or the weather: never objects, whatever
# their WordNet senses (the paper's prompt: places, road, sky, water, ground, weather, lines).
NON_OBJECTS = frozenset(
    """
    image picture photo photograph scene shot view background foreground side front back top
    bottom middle center centre corner edge distance area part thing things object objects item
    items something everything anything nothing stuff detail details element elements setting
    atmosphere sense feeling mood environment surroundings space spot place location position
    sky cloud clouds air weather sun sunlight sunshine light lighting shadow shade reflection
    glow rain snow fog mist storm wind day night evening morning sunset sunrise dusk dawn
    water sea ocean lake river pond stream wave waves surf shore coast beach sand mud dirt soil
    ground earth land field grass lawn meadow hill hillside mountain slope valley forest woods
    countryside landscape horizon savanna desert island cliff rock_formation terrain
    road street highway lane path sidewalk pavement crosswalk intersection curb driveway
    parking_lot track_and_field runway tarmac trail alley line lines stripe stripes marking
    markings
    wall walls floor ceiling roof ground_floor surface tile tiles
    room kitchen bathroom bedroom living_room dining_room office garage hallway lobby interior
    exterior indoors outdoors inside outside
    city town village neighborhood neighbourhood downtown square plaza park playground garden
    yard backyard farm zoo market cafe restaurant bar shop store station airport stadium arena
    court pitch marina harbor harbour port dock pier beachfront campus school church
    skate_park skatepark enclosure event game match race
    color colour hue hues tone tones pattern design texture style shape size
    text word words letter letters logo writing caption number numbers graffiti
    music sound noise smoke steam fire flame flames
    """.split()
)
