"""The built-in corpus's text: name pools, word tables and the plot skeletons, in the template
mini-language that `slmtrain.data.stories` parses (see its docstring). Data only; all text here is
original to this project.
"""

from __future__ import annotations

_BOYS = ("Tom Ben Sam Max Leo Jack Tim Finn Noah Jake Owen Luke Eli Adam Dan Theo Ollie Milo "
         "Ryan Jonah Oscar Henry").split()
_GIRLS = ("Lily Mia Anna Sue Emma Lucy Ella Zoe Amy Rosa Nora Ivy Maya Kate Sara Lena Ruby "
          "Grace Hannah Chloe Molly Daisy").split()
_PARENTS = ("Mom", "Mom", "Dad", "Dad", "Grandma", "Grandpa")
_PET_BOYS = "Spot Buddy Patch Pip Rusty Ziggy".split()
_PET_GIRLS = "Coco Biscuit Snowy Pepper Muffin Button".split()
_TOYS = ("ball|teddy bear|doll|rag doll|toy car|toy train|robot|toy boat|toy rocket|toy truck|"
         "fire truck|toy bus|toy plane|toy tractor|toy bunny|toy dinosaur|toy horse|toy duck|"
         "toy owl|toy lion|toy monkey|toy giraffe|stuffed elephant|stuffed puppy|puppet|music box|"
         "yo-yo|spinning top|toy drum|toy penguin|toy turtle|toy fox").split("|")
_TOY_ADJ = "red blue green yellow orange purple pink brown little small big".split()
_WEATHER = "sunny warm bright lovely breezy cool windy golden".split()
_TIMES = ("morning", "afternoon", "day")
_TRAITS = "kind curious cheerful friendly playful happy gentle clever".split()
_HOBBIES = ("to play outside|to draw pictures|to sing songs|to run and jump|to read books|"
            "to build things|to dance|to splash in puddles").split("|")
_AGES = "four five six seven".split()
_SPOTS = ("under the bed|behind the sofa|under a big pillow|inside {his} rain boot|in the laundry "
          "basket|behind the curtain|under a pile of leaves in the yard|in the dog's basket"
          ).split("|")
_GIFTS = ("a card with a big red heart on it|a picture of the whole family|a necklace made of "
          "bright beads|a little clay cup|a paper crown covered in gold stars").split("|")
_DREAMS = ("a big gray monster was chasing {him} through the woods|{he} was lost in a dark maze|"
           "a giant spider was hiding in {his} closet|{his} bed was floating away on a stormy sea|"
           "all of {his} toys had run away").split("|")
_GOOD_DREAMS = ("flying over the town like a bird|a castle made of cake|a friendly dragon who "
                "liked to dance|riding a whale across the sea|a garden full of talking flowers"
                ).split("|")
_BREAKABLES = "flower vase|old teapot|blue cup|little lamp|china plate|glass bird".split("|")
_GAMES = ("a game of tag|with building blocks|a board game|hide and seek|catch with a ball|"
          "with toy cars").split("|")
_SNACKS = "apples and cheese|sandwiches|crackers and grapes|warm muffins|orange slices".split("|")
_ROLES = "a robot|a busy bee|a race car|a dragon collecting treasure|a super hero".split("|")
_PAST = {"play": "played", "build": "built", "walk": "walked", "watch": "watched",
         "feed": "fed", "throw": "threw", "climb": "climbed", "pick": "picked", "roll": "rolled",
         "read": "read", "look": "looked", "taste": "tasted", "hike": "hiked"}

# Rows whose fields must stay consistent with each other (the sight, activity and find of one
# place); " ; " separates fields.
_PLACES = """the park ; ducks swimming on the pond ; play on the swings ; a red leaf
the beach ; big waves and white seagulls ; build a sand castle ; a pink shell
the forest ; tall trees and a little stream ; walk along a quiet path ; a brown pine cone
the zoo ; lions, monkeys, and a tall giraffe ; watch the seals play ; a long feather
the farm ; cows, pigs, and fluffy sheep ; feed the goats ; a white goose feather
the lake ; boats with bright sails ; throw stones into the water ; a smooth flat stone
the playground ; a slide and a big sandbox ; climb on the monkey bars ; a shiny blue marble
the pond ; frogs sitting on lily pads ; feed bread to the ducks ; a smooth gray pebble
the meadow ; butterflies and bright flowers ; pick flowers ; a four-leaf clover
the big hill ; the whole town far below ; roll down the grassy slope ; a tiny snail shell
the river ; fish jumping in the water ; watch the boats go by ; a round white stone
the library ; shelves full of books ; read picture books ; a bookmark with a cat on it
the museum ; huge dinosaur bones ; look at old paintings ; a little paper map
the market ; piles of fruit and fresh bread ; taste sweet strawberries ; a shiny button
the orchard ; trees full of red apples ; pick apples ; a perfect red apple
the mountains ; snowy peaks and tall pines ; hike up a rocky trail ; a sparkly rock"""
_WILD = [tuple(pair.split(":")) for pair in (
    "bird:flew,duckling:waddled,bunny:hopped,squirrel:ran,frog:hopped,hedgehog:shuffled,"
    "turtle:crawled,kitten:ran,mouse:scurried,baby owl:flew,fox cub:ran,lamb:trotted,"
    "baby goat:trotted,chick:hopped").split(",")]
_TROUBLES = """stuck in a thorny bush ; pulled the branches apart so it could climb out
caught in an old fishing net ; untangled the net one piece at a time
stuck in a deep hole ; lifted it out with a soft towel
tangled in a long piece of string ; untied the string from its legs
trapped under a fallen branch ; lifted the heavy branch off
stuck behind the garden fence ; helped it slip through a gap in the boards"""
_PETS = """dog ; soft brown ears ; chase balls in the yard ; a happy bark
puppy ; a waggy tail and big paws ; chew on old socks ; a little yip
cat ; a fluffy white tail ; nap in the sun ; a soft meow
kitten ; tiny gray paws ; play with string ; a tiny meow
bunny ; long floppy ears ; munch on carrots ; a soft thump
parrot ; bright green feathers ; sing silly songs ; a loud squawk
guinea pig ; a round brown body ; eat lettuce ; a little squeak"""
_PET_SPOTS = ("inside the old shed|under the neighbor's porch|up in the apple tree|under a pile "
              "of leaves|behind the trash cans|inside an empty flower pot").split("|")
_STRANGERS = """old man ; he ; his ; him ; a long white beard
old woman ; she ; her ; her ; a purple hat
tall man ; he ; his ; him ; a friendly smile
young woman ; she ; her ; her ; a big yellow bag
mail carrier ; she ; her ; her ; a bag full of letters
police officer ; he ; his ; him ; a blue cap"""
_FEARS = """the dark ; At night, the shadows on {his} wall looked like monsters ; That night, the \
light in the hall went out, and {his} room was very dark ; {P} turned on a little lamp and \
showed {him} that the scary shape was only {his} coat on a hook ; {He} looked around the room, \
and nothing there was scary at all
thunder ; The loud booms made {him} jump and hide ; One night, a big storm came, and the \
thunder went BOOM ; {P} said that thunder is only the sound lightning makes, and it cannot \
hurt anyone inside the house ; When the next boom came, {he} laughed instead of hiding
the big slide ; It was so tall that {his} knees felt wobbly ; One day at the playground, all \
the other children went down the big slide ; {P} climbed up behind {him} and held {his} hand \
at the top ; {He} sat down, let go, and went WHOOSH all the way to the bottom
dogs ; A big dog had barked at {him} once ; One day in the park, a big brown dog trotted up \
to {him} ; The dog's owner smiled and said, "This is Rosie. There is no gentler dog in \
town." ; {He} held out {his} hand, and Rosie licked it with a warm pink tongue
bees ; {He} thought every bee wanted to sting {him} ; One day in the garden, a fat bee \
buzzed around {his} head ; {P} said that bees are busy looking for flowers, and if you stay \
calm they leave you alone ; {He} stood very still, and the bee flew away to a yellow flower"""
_SKILLS = """ride a bike ; the bike wobbled, and {he} fell onto the grass ; {P} held the back \
of the seat and ran next to {him} ; {he} rode all the way down the path by {self}
swim ; {he} swallowed some water and began to cough ; {P} held {him} up and showed {him} \
how to kick {his} legs ; {he} kicked and paddled across the pool by {self}
skate ; {his} feet slid out, and {he} landed on {his} bottom ; {P} held both of {his} hands \
and skated slowly with {him} ; {he} glided all the way around the rink
tie {his} shoes ; the laces got tangled in a big knot ; {P} showed {him} the bunny ears \
trick ; {he} tied both shoes in neat little bows
jump rope ; the rope caught on {his} feet ; {P} counted out loud so {he} could jump in time \
; {he} jumped ten times without stopping
whistle ; only air came out ; {P} showed {him} how to make {his} lips small and round ; \
{he} blew a loud, clear whistle"""
_SEEDS = """a sunflower seed ; it ; a tall yellow sunflower, taller than {n}
some bean seeds ; them ; a bean plant full of long green beans
some carrot seeds ; them ; a row of sweet orange carrots
a pumpkin seed ; it ; a big round orange pumpkin
some tomato seeds ; them ; a bush full of red tomatoes
some flower seeds ; them ; a patch of pink and purple flowers"""
_FOODS = """cookies ; {n} put in salt instead of sugar ; The cookies tasted very salty ; They \
made a new batch, and this time {n} checked the jar first
muffins ; {n} knocked the bag of flour off the table ; White flour went all over the floor, \
and all over {n} too ; They swept up the mess together and started again
pancakes ; {n} flipped a pancake much too high ; It landed on the floor with a plop ; {P} \
showed {him} how to flip gently, and the next one landed right in the pan
cupcakes ; they forgot the cupcakes in the oven ; The cupcakes came out a little black on \
the bottom ; They cut off the black parts and covered the tops with pink frosting
cinnamon buns ; {n} poured in far too much milk ; The dough turned into a runny soup ; {P} \
added more flour, bit by bit, until the dough was just right"""

_OPENINGS = [
    "Once upon a time, there was a [little|young] {kid} named {n}.",
    "There was once a {trait} little {kid} called {n}.",
    "{N} was a {trait} little {kid} who loved {hobby}.",
    "Once there was a {kid} named {n} who lived in a [small|yellow|blue] house [by the woods|"
    "near the sea|on a quiet street].",
    "{N} was {age} years old, and {he} was very {trait}.",
]
_CLOSINGS = [
    "It was a very good day.", "That night, {n} fell asleep with a big smile.",
    "{N} would always remember that day.", "And {n} was happy.", "The end.",
]

_SKELETON_SRC = {
    "lost_toy": """
@O
{N} had {a_toy}. It was {his} favorite toy in the whole world. | {N}'s favorite toy was {a_toy}.
| More than anything, {n} loved {his} {dtoy}.
?{His} [grandma|grandpa|aunt] had given it to {him} [for {his} birthday|a long time ago].
/
One [morning|day|evening], {n} could not find {his} {toy}. | But one day, the {toy} was gone!
~{He} looked [in the toy box|under the table|on the shelf].
~{He} searched [the kitchen|behind the door|inside {his} bag].
It was nowhere to be found.
{N} [felt very sad|began to cry|sat down on the floor]. "Where is my {toy}?" {he} [said|asked].
/
{P} came over and [gave {him} a hug|sat down next to {him}]. "Let's look together," {phe} said.
| {P} heard {him} and came to help. "Don't worry, we will find it," {phe} said.
?"Think about where you played with it last," said {p}.
Then {n} had an idea. {He} looked {spot}, and there it was! | At last, {n} looked {spot}. \
There was the {toy}!
?It was a little dusty, but it was safe.
/
{N} held the {toy} close and smiled. "Thank you, {p}!" {he} said. | {N} was so happy. {He} \
gave {p} a big hug.
After that, {n} always put {his} toys away [before bed|at the end of the day]. | From then on, \
{n} kept the {toy} in a safe place.
?@C""",
    "new_friend": """
@O
One {wx} {tod}, {n} went to {place} with {p}. | On a {wx} {tod}, {p} took {n} to {place}.
{N} wanted to play, but {he} did not know anyone there. | There were many children there, \
but {n} did not know any of them.
?{He} sat by {self} and watched the other children {act}.
/
Then a {fkid} with [a big smile|red boots|curly hair|a yellow hat] came over.
"Hi, I'm {f}," said the {fkid}. "Do you want to play with me?" | "Hello! My name is {f}," \
said the {fkid}. "Will you play with me?"
{N} felt a little shy, but {he} nodded. | "Yes, please!" said {n}, and {he} smiled.
/
They {actp} together. | First they {actp}, and then they played tag.
~They laughed so much that their tummies hurt.
~?{F} showed {n} a funny dance, and {n} showed {fhim} how to do a cartwheel.
When it was time to go home, {n} waved to {f}. "Can we play again tomorrow?" {he} asked.
"Yes!" said {f}. "See you tomorrow!"
/
On the way home, {n} told {p}, "I have a new friend!" | That night, {n} could not stop \
smiling.
{N} learned that saying hello is the first step to making a friend. | {N} learned that \
being brave for one moment can give you a friend for a long time.""",
    "fear": """
@O
But {n} had a secret. {He} was afraid of {fear}. | {N} was brave about many things, but \
{he} was scared of {fear}.
{Why}.
?{He} did not like to talk about it.
/
{Scene}.
{N} [felt {his} heart beat fast|wanted to hide|began to shake]. "{P}!" {he} called.
/
{P} came and held {his} hand. "It is okay to be scared," {phe} said. "I will help you." \
| {P} gave {him} a hug. "Being brave does not mean you are not scared," {phe} said softly.
{Fix}.
{N} took a deep breath. {After}. | {N} counted to three. {After}.
/
After that, {n} was not afraid of {fear} anymore. | From that day on, {fear} did not \
scare {n} so much.
?{He} felt [brave|proud|big and strong].
{N} learned that being brave means trying even when you feel scared. | {N} learned that \
a fear gets smaller when you look at it with someone you love.""",
    "sharing": """
@O
{N} got {a_toy} [for {his} birthday|from {his} grandma|as a gift]. {He} loved it very much.
| {N} had a new {dtoy}. {He} thought it was the best toy ever.
One [day|afternoon], {his} friend {f} came over to play. | One afternoon, {n}'s friend {f} \
knocked on the door. {Fhe} wanted to play.
/
{F} saw the {toy} and [smiled|clapped {fhis} hands]. "Can I play with it too?" {fhe} asked.
"No! It's mine!" said {n}, and {he} held the {toy} close. | But {n} did not want to share. \
"It's mine," {he} said, and {he} hid it behind {his} back.
{F} looked down at the floor and did not say anything. | {F}'s face became very sad.
/
{N} played alone for a while, but it was not fun. | {N} tried to play by {self}, but it \
was boring.
?{He} looked at {f}, who was sitting quietly in the corner.
{He} remembered that {p} always said sharing makes everyone happy. | {N} thought about how \
{f} must feel.
/
{N} walked over to {f}. "I'm sorry. Let's play with it together," {he} said. | "Here, you \
can have a turn," {n} said, and {he} gave the {toy} to {f}.
{F} smiled a big smile. "Thank you!" {fhe} said.
They played together all afternoon, and it was much more fun than playing alone.
{N} learned that sharing makes a toy twice as fun. | {N} learned that a happy friend is \
better than a toy.
?@C""",
    "rainy_day": """
@O
One {tod}, {n} looked out the window. [Rain was falling|It was raining hard|Big gray \
clouds filled the sky, and rain was pouring down].
"Oh no," said {n}. "I wanted to go to {place} today." | {N} had wanted to play outside. \
"Now I can't go anywhere," {he} said sadly.
/
{P} had an idea. "Let's build a fort," {phe} said.
They took all the pillows and blankets and made a big fort in the living room.
Inside the fort, they read books with a flashlight.
?{N} pretended it was a secret cave.
/|
{P} smiled. "Put on your rain boots," {phe} said. "Let's go jump in the puddles!"
{N} put on {his} [yellow|red|green] boots and {his} raincoat.
Outside, {n} jumped in every puddle. SPLASH! Water went everywhere.
?{He} saw a fat worm wiggling on the path and a snail on a wet leaf.
/|
{P} got out paper and paints. "Let's paint a sunny day," {phe} said.
{N} painted {place} with a big yellow sun and {a_toy} in the corner.
?{He} got blue paint on {his} nose, and {p} laughed.
/
In the afternoon, the rain stopped, and a rainbow came out.
"Look!" {n} shouted. "A rainbow!" | {N} counted all the colors of the rainbow.
{N} learned that a rainy day can be fun too. | {N} learned that you can have fun in any \
kind of weather.""",
    "help_animal": """
@O
One {wx} {tod}, {n} was walking [in the garden|near the woods|by the pond|in the park] \
with {p}.
Suddenly, {he} heard a [small|tiny|soft] sound. It came from [behind a bush|under a tree|\
near the fence].
{N} looked and saw {a_wa}. It was {trouble}.
?The poor little {wa} looked [scared|tired|cold].
/
"{P}, we have to help it!" said {n}. | "Poor little {wa}," said {n}. "Can we help it, {p}?"
{P} nodded. [Very gently|Slowly and carefully], they {fix}.
?{N} spoke to it in a soft voice so it would not be afraid.
?Then {n} gave it some water in a little cup.
/
The {wa} [looked at {n}|shook itself] for a moment. Then it {wmove} away [into the grass|\
toward the trees|to its home].
?{N} waved. "Bye, little {wa}!" {he} called.
{N} felt warm and happy inside. | {N} smiled all the way home.
{N} learned that even small helpers can do big things. | It felt good to be kind to a \
little animal.""",
    "birthday": """
@O
Tomorrow was {p}'s birthday, and {n} wanted to make it special. | {N} knew that {p}'s \
birthday was coming soon. {He} wanted to give {phim} a surprise.
/
{N} did not have money to buy a present, so {he} decided to make one.
{He} made {gift}. | {He} worked hard and made {gift}.
?It took a long time, but {he} did not give up.
{N} hid the present [under {his} bed|in {his} closet|behind {his} books]. "Shh," {he} told \
{his} {toy}. "It's a secret."
/
The next morning, {n} jumped out of bed. "Happy birthday, {p}!" {he} shouted.
{P} opened the present. {Phis} eyes grew wide. | {P} opened the present and smiled.
"Did you make this all by yourself?" {phe} asked. {N} nodded proudly.
/
"This is the best present I have ever had," said {p}, and {phe} gave {n} a big hug.
?{P} kept it [on the kitchen table|by {phis} bed] for a long, long time.
{N} learned that the best gifts come from the heart. | {N} learned that making someone \
happy is the best feeling of all.""",
    "learn_skill": """
@O
{N} wanted to learn to {skill}. | More than anything, {n} wanted to {skill} like the big \
kids.
?{His} friend {f} could already {skill}, and {n} wanted to try too.
/
On the first try, {fail}. | {N} tried, but {fail}.
?{He} tried again, and the same thing happened.
"I can't do it!" {he} cried. "I will never learn." | {N} felt [sad|cross] and wanted to \
give up.
/
{P} sat down next to {him}. "Nobody can do it on the first try," {phe} said. | {P} knelt \
beside {him}. "Everyone finds new things hard at first," {phe} said.
{Help}.
They practiced [every day for a week|all afternoon|again and again].
/
Then one day, {succ}! | At last, {succ}!
"I did it!" {n} shouted. "{P}, look!"
{P} clapped and cheered. {N} felt so proud.
{N} learned that practice helps you get better. | {N} learned that if you keep trying, you \
can do hard things.""",
    "garden": """
@O
One spring day, {p} gave {n} {seed}. "If you take care of {seedit}, something will grow," \
{phe} said.
{N} dug a little hole in the garden and planted {seedit}. | {N} put {seedit} in a pot of \
soil by the window.
/
Every day, {n} watered the soil.
?{He} even sang a little song to help {seedit} grow.
But nothing happened. "Why isn't anything growing?" {he} asked. | Many days went by, and \
the soil looked the same.
"Be patient," said {p}. "Good things take time."
/
One morning, {n} saw a tiny green sprout! "{P}, look!" {he} shouted.
The sprout grew bigger and bigger.
?Soon it had [big leaves|strong stems|tiny buds].
/
By the end of summer, there was {plant}.
{N} was so proud.
?{He} showed it to {his} friend {f}, and {f} said it was the best in the whole street.
{N} learned that good things come to those who wait. | {N} learned that a little care \
every day can make something wonderful.""",
    "argue_apology": """
@O
{N} and {f} were best friends. They played together every day.
/
One day, they were playing {game} [in the yard|at the park|in {n}'s room].
But [they could not agree on who should go first|they both wanted to win|{f} said {n} \
was not playing fair].
Soon they began to shout. "It's my turn!" said {f}. "No, it's mine!" said {n}.
{F} got angry and went home. | {F} stomped off without saying goodbye.
/
{N} felt [sad|lonely|bad inside]. The game was not fun without {f}.
?{He} sat on the steps and did not feel like playing.
{P} asked what was wrong, and {n} told {phim}. | {P} saw {his} sad face and sat down \
next to {him}.
"Maybe you can talk to {f}," {p} said. "Friends can fix things." | "A good friend says \
sorry," said {p}.
/
{N} went to {f}'s house and knocked on the door. "I'm sorry I shouted," {he} said. "You \
can go first."
{F} smiled. "I'm sorry too," {fhe} said.
They hugged and went back to play. | They laughed and started the game again.
{N} learned that saying sorry can fix a friendship. | {N} learned that being friends is \
more important than winning.""",
    "trip": """
@O
One {wx} {tod}, {p} said, "Let's go to {place}!" | On a {wx} {tod}, {n} and {p} went \
to {place}.
{N} was so excited that {he} jumped up and down. | {N} clapped {his} hands with joy.
?{He} packed a snack and {his} {dtoy}.
/
When they got to {place}, {n} saw {sight}. | At {place}, {n} saw {sight}.
They {actp}. | First they {actp}, and then they sat down to eat {snack}.
~{N} found {find}. {He} put it in {his} pocket to show {his} friend {f}.
~?"This is the best place in the world!" said {n}.
/
When the sun began to go down, it was time to go home. | Soon the sky turned orange, and \
it was time to go.
{N} was tired but happy. "Can we come back soon?" {he} asked. | On the way home, {n} told \
{p} about {his} favorite part.
?{P} smiled. "We will," {phe} said.
?@C""",
    "bad_dream": """
@O
One night, {n} had a bad dream. In the dream, {dream}.
{N} woke up and called for {p}. {His} heart was beating fast. | {N} woke up and began to \
cry.
/
{P} came in and turned on the light. "What's wrong?" {phe} asked.
{N} told {phim} about the dream.
{P} hugged {him}. "It was only a dream," {phe} said. "Dreams cannot hurt you. I am right \
here."
?{P} [sang {him} a soft song|gave {him} a glass of water|checked the closet and under the \
bed].
/
Then {p} gave {n} {his} {dtoy}. "Your {toy} will keep you company," {phe} said with a smile.
{N} held it close and closed {his} eyes.
This time, {he} dreamed about {gooddream}.
/
In the morning, {n} felt much better. | When the sun came up, {n} woke up smiling.
{N} learned that when you are scared, it helps to tell someone you love. | {N} knew that \
bad dreams go away, and morning always comes.""",
    "baking": """
@O
One [rainy|cold|quiet] {tod}, {p} said, "Would you like to help me make {food}?" "Yes!" said \
{n}.
They put on aprons and got out a big bowl. | They washed their hands and got out a big bowl.
?{N} cracked the eggs, and {p} measured the flour.
/
But then there was a problem! {Mishap}. | Oops! {Mishap}.
{Result}.
?"Oh no!" said {n}. {He} was afraid {p} would be cross.
/
But {p} just laughed. "Everyone makes mistakes in the kitchen," {phe} said.
{Fix}.
/
Soon the kitchen smelled [sweet|warm and yummy]. The {food} were perfect.
?They shared them with [the neighbors|{n}'s friend {f}].
{N} learned that mistakes are okay when you laugh and try again. | {N} learned that even a \
mess can turn into something good.""",
    "lost_pet": """
@O
{N} had {a_pet} named {pn}. {Pn} had {look} and loved to {like}.
One day, {n} found the [garden gate|front door] open. {Pn} was gone!
/
{N} called, "{Pn}! {Pn}! Where are you?" | {N} ran outside and shouted {pn}'s name.
~{He} looked [under the bushes|behind the shed], but {pn} was not there.
~{He} asked [Mrs. Green|Mr. Brown] next door, but nobody had seen {ahim}.
{N} sat down and began to cry.
/
{P} came to help. "We will find {ahim} together," {phe} said.
?They made signs with a picture of {pn} and put them on the trees.
Then {n} heard {psound}. It came from {pspot}. | Just then, {n} heard {psound} {pspot}.
There was {pn}! {Ahe} was [safe|dirty but safe|a little scared].
/
{N} hugged {pn} tight. "I missed you so much!" {he} said.
From then on, {n} always closed the gate. | From then on, {n} made sure the door was \
always shut.
{N} learned to take good care of the ones you love. | {N} learned that a pet needs a lot \
of care.""",
    "kind_stranger": """
@O
One {wx} {tod}, {n} went to the [market|town fair] with {p}.
{N} stopped to look at [a man playing music|a shop window full of toys|a big red balloon], \
and when {he} looked up, {p} was gone!
{N} felt scared and began to cry.
/
Then {a_wn} with {wdet} came over. "Are you lost, little one?" {whe} asked kindly.
{N} nodded. "I can't find {p}," {he} said.
The {wn} held {his} hand, and together they looked for {p}. | The {wn} took {n} to the \
help desk to wait for {p}.
/
Soon {n} saw {p} running toward {him}. {P} hugged {him} tight.
"Thank you so much," {p} said to the {wn}. | {P} thanked the {wn} again and again.
?{P} told {n}, "If you get lost, stay still and ask a grown-up for help."
/
The next week, {n} saw a little child drop a bag of apples. {N} helped pick them up, just \
like the {wn} had helped {him}.
{N} learned that one kind act can lead to another. | {N} learned that kindness is \
something you can pass on.""",
    "snow_day": """
@O
When {n} woke up, everything outside was white. It had snowed all night!
{N} put on {his} warm coat, {his} mittens, and {his} [red|striped|woolly] hat.
/
{N} and {his} friend {f} built a snowman in the yard. They gave it a carrot nose and two stone eyes.
?They named the snowman [Mr. Frosty|Puff|Snowball].
Then they [had a snowball fight|made snow angels|slid down the hill on a sled].
?{N} laughed so hard that {he} fell over in the snow.
/
Soon their noses were red and cold. {P} called them inside for hot cocoa.
/
A few days later, the sun came out, and the snowman melted. {N} was sad.
"Don't worry," said {p}. "The snow will come back next winter."
{N} learned that good things can come again if you wait. | {N} smiled and thought about \
next winter.""",
    "truth": """
@O
{N} was playing with a ball in the house, even though {p} had said not to.
The ball bounced high and hit {p}'s {breakable}. CRASH! It fell and broke.
/
{N} was scared. {He} hid the pieces under the [rug|sofa].
When {p} asked what happened, {n} said, "I don't know."
But {n} felt bad inside. | But that night, {n} could not sleep.
/
At last, {n} went to {p}. "I broke it," {he} said. "I'm sorry I did not tell you."
{P} hugged {him}. "Thank you for telling me the truth," {phe} said. "I am proud of you."
?Together they glued the pieces back together.
/
{N} learned that telling the truth is always better. | {N} learned that a lie feels heavy, \
but the truth makes you feel light.""",
    "tidy_room": """
@O
{N}'s room was a big mess. Toys, books, and socks were everywhere.
{P} said, "Please clean your room before dinner." But {n} did not want to. "It's too much \
work!" {he} said.
/
{N} sat on the bed and sighed. Then {he} had an idea. {He} would make it a game.
{He} pretended to be {role}.
~{He} put the books on the shelf.
~{He} put the socks in the basket.
~{He} put the toys in the box.
Under the bed, {n} found {his} old {dtoy}. "I thought I lost you!" {he} laughed.
/
Soon the room was clean. {P} came in and said, "Wow! What a tidy room!"
{N} learned that a big job is easier when you make it fun. | {N} learned that helping can \
be fun.""",
    "sports_day": """
@O
It was sports day at school, and {n} wanted to win the big race. | {N} had practiced \
running all week for the big race at school.
/
"On your marks, get set, go!" said the teacher. {N} ran as fast as {he} could.
?{He} was winning! The finish line was very close.
Then {n} saw {his} friend {f} fall down and hurt {fhis} knee. | But then {n}'s friend {f} \
tripped and fell on the grass.
/
{N} stopped and helped {f} up. The other children ran past them.
They walked to the finish line together, hand in hand.
Everyone clapped the loudest for {n} and {f}. | {P} cheered from the crowd.
/
"Being kind is better than winning," said the teacher. | "You are a true friend," said {f}.
{N} did not win the race, but {he} felt like a winner.""",
}
